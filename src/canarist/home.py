"""Where canarist keeps its state: `.canarist/` beside the spec, or `$CANARIST_HOME`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from canarist.errors import ConfigError

SPEC_NAME = "canarist.yaml"


@dataclass(frozen=True)
class Home:
    """The state directory and the files in it."""

    root: Path
    config: Path  # the canarist.yaml this home belongs to

    @classmethod
    def locate(cls, config: Path | None = None) -> Home:
        """The home for `config` (default ./canarist.yaml); ConfigError if there is no spec."""
        spec = (config or Path.cwd() / SPEC_NAME).resolve()
        if not spec.is_file():
            raise ConfigError(f"no spec at {spec} (run `canarist init` or pass --config)")
        env = os.environ.get("CANARIST_HOME")
        root = Path(env).resolve() if env else spec.parent / ".canarist"
        return cls(root=root, config=spec)

    @classmethod
    def for_artifacts(cls, config: Path | None = None) -> Home:
        """Like `locate`, but a missing spec is fine: `build` works anywhere."""
        try:
            return cls.locate(config)
        except ConfigError:
            env = os.environ.get("CANARIST_HOME")
            root = Path(env).resolve() if env else Path.cwd() / ".canarist"
            return cls(root=root, config=Path.cwd() / SPEC_NAME)

    @property
    def artifacts(self) -> Path:
        return self.root / "releases"

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def haproxy(self) -> Path:
        return self.root / "haproxy"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def endpoint(self) -> Path:
        """JSON with the controller's pid and API port, written once it listens."""
        return self.root / "controller.json"

    @property
    def lock(self) -> Path:
        return self.root / "controller.lock"

    @property
    def pidfile(self) -> Path:
        return self.root / "controller.pid"
