"""The `Platform` protocol: where a release's instances run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Instance:
    """One running copy of a release, as the controller records it."""

    id: str
    service: str
    release: str  # "sha256:<hex>"
    host: str
    port: int
    pid: int
    # Start time of the process in clock ticks since boot (/proc/PID/stat field 22),
    # so a recycled PID is never mistaken for our instance after a controller restart.
    pid_start: int
    workdir: Path
    started_at: float  # wall clock


class Platform(Protocol):
    """Starts, checks and stops instances. Every call is idempotent."""

    async def prepare(self, release: str) -> None:
        """Make a release startable (verify its bytes, build its cached venv).

        Raises TamperedRelease / UnknownRelease before anything starts.
        """

    async def start(
        self, service: str, release: str, instance_id: str, *, health_path: str, timeout: float
    ) -> Instance:
        """Start a fresh instance from a fresh unpack and return once its health path answers 2xx.

        Raises InstanceFailed (after stopping what it started) if it is not healthy in time.
        """

    async def healthy(self, instance: Instance, *, health_path: str, timeout: float) -> bool:
        """One health probe: True when GET health_path answers 2xx within timeout."""

    def alive(self, instance: Instance) -> bool:
        """True while the instance's own process (same PID and start time) runs."""

    async def discard(self, instance_id: str) -> None:
        """Remove whatever a start interrupted by a controller crash left behind: a process
        that was spawned but never recorded, and its files. Nothing there is not an error."""

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; then remove its unpacked files.

        Stopping an instance that is already gone is not an error.
        """


class GroupPlatform(Protocol):
    """Runs a release as one group sized as a whole (an Auto Scaling group, a Lambda
    version): the provider starts, checks and replaces the instances itself. Every call
    is idempotent."""

    async def prepare(self, release: str) -> str:
        """Make the release's group ready at size 0; return what a router points at for it
        (a target group ARN, a Lambda version).

        Raises UnknownRelease / TamperedRelease before creating anything.
        """

    async def scale(self, release: str, count: int) -> None:
        """Set the release's group to `count` instances; 0 keeps the group, empty."""

    async def healthy_count(self, release: str) -> int:
        """How many of the release's instances are in service and healthy."""

    async def retire(self, release: str) -> None:
        """Remove the release's group and what `prepare` made for it alone (idempotent)."""
