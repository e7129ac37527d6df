"""The one exception tree of canarist.

    CanaristError                  anything canarist raises on purpose
    ├── BadInput                   the user asked for something invalid; exit 2, nothing changed
    │   ├── ConfigError            malformed canarist.yaml or app pyproject, unknown provider name
    │   ├── UnknownService
    │   ├── UnknownRelease
    │   ├── TamperedRelease        stored bytes no longer match the release digest
    │   └── RolloutInProgress      a second rollout while one runs
    ├── BuildError                 a release could not be built (dependency resolution, I/O)
    ├── ControllerUnavailable      the controller is not running or does not answer
    └── DriverError                a platform or router failed; the controller retries
        ├── InstanceFailed         an instance did not start or did not become healthy
        ├── RouterError            HAProxy (or another router) refused or is unreachable
        └── AWSError               an AWS API call failed (botocore errors, translated)

Provider exceptions (OSError, sqlite3.Error, ...) are translated at the driver edge
with ``raise ... from exc``; callers test the types above, never message strings.
"""

from __future__ import annotations


class CanaristError(Exception):
    """Anything canarist raises on purpose."""


class BadInput(CanaristError):
    """The user asked for something invalid; the CLI exits 2 and nothing changed."""


class ConfigError(BadInput):
    """A spec, an app's pyproject or a provider name is malformed."""


class UnknownService(BadInput):
    """The named service is not declared in canarist.yaml."""


class UnknownRelease(BadInput):
    """No release with that reference is in the artifact store."""


class TamperedRelease(BadInput):
    """A stored release's bytes no longer match its digest."""


class RolloutInProgress(BadInput):
    """A rollout is already running for the service."""


class BuildError(CanaristError):
    """A release could not be built."""


class ControllerUnavailable(CanaristError):
    """The controller is not running or does not answer."""


class DriverError(CanaristError):
    """A platform or router call failed; the controller may retry it."""


class InstanceFailed(DriverError):
    """An instance did not start, or did not become healthy in time."""


class RouterError(DriverError):
    """The router refused a change or could not be reached."""


class AWSError(DriverError):
    """An AWS API call failed; `code` is AWS's error code when there is one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code
