"""A platform for releases that already run elsewhere: canarist only moves their traffic.

Route 53 weighted records and API Gateway stage canaries point at things deployed by
other means (a load balancer per environment, an API deployment). The spec names what
each release is on the provider, by release reference or a unique prefix of it:

    aws:
      platform: external
      external: {targets: {"sha256:3f2a…": blue.example.com, "9c41d2": green.example.com}}

`prepare` hands that target to the router; sizes are the provider's business, so a group
is as large as it was asked to be.
"""

from __future__ import annotations

from collections.abc import Mapping

from canarist.domain.release import parse_reference
from canarist.errors import ConfigError, UnknownRelease

_MIN_PREFIX = 6


class ExternalPlatform:
    """Releases deployed by other means, each known by its target (see the module)."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        cleaned: dict[str, str] = {}
        for key, value in targets.items():
            bare = str(key).removeprefix("sha256:").lower()
            if len(bare) < _MIN_PREFIX or any(c not in "0123456789abcdef" for c in bare):
                raise ConfigError(f"external.targets: {key!r} is not a release reference or prefix")
            if not str(value):
                raise ConfigError(f"external.targets: {key!r} has an empty target")
            cleaned[bare] = str(value)
        self._targets = cleaned
        self._sizes: dict[str, int] = {}

    def target(self, release: str) -> str:
        """The target named for `release`; UnknownRelease when none (or several) match."""
        bare = parse_reference(release).removeprefix("sha256:")
        found = [v for k, v in self._targets.items() if bare.startswith(k)]
        if len(found) != 1:
            why = "no target" if not found else "several targets"
            raise UnknownRelease(f"{why} for release {release[:19]} in external.targets")
        return found[0]

    async def prepare(self, release: str) -> str:
        """The release's target, as the spec names it."""
        return self.target(release)

    async def scale(self, release: str, count: int) -> None:
        """Remember the size asked for."""
        self._sizes[release] = count

    async def healthy_count(self, release: str) -> int:
        """The size asked for: the provider runs and checks what it deployed."""
        return self._sizes.get(release, 0)

    async def retire(self, release: str) -> None:
        """Nothing of it is canarist's to remove."""
        self._sizes.pop(release, None)
