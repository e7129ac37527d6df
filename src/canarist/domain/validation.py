"""pydantic's validation errors as canarist's one-line ConfigError."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from canarist.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def config_error(exc: ValidationError, source: str) -> ConfigError:
    """`source: field.path: what is wrong`, from the first of pydantic's errors."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{source}: {field}: {message}" if field else f"{source}: {message}")


def parse_settings(model: type[Model], data: Any, source: str) -> Model:
    """`model` validated from `data`; any problem is one ConfigError line naming `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, source) from exc
