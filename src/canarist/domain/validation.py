"""pydantic's validation errors as canarist's one-line ConfigError."""

from __future__ import annotations

from pydantic import ValidationError

from canarist.errors import ConfigError


def config_error(exc: ValidationError, source: str) -> ConfigError:
    """`source: field.path: what is wrong`, from the first of pydantic's errors."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{source}: {field}: {message}" if field else f"{source}: {message}")
