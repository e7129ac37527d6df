"""The `Router` protocol: how a service's traffic is split between releases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class ServiceRoute:
    """The shape of a service's route. Changing it may need the router to reload."""

    name: str
    listen_host: str
    listen_port: int
    slots: int  # server slots declared up front (HAProxy cookie stickiness needs them)
    health_path: str
    sticky: bool = False
    canary_header: str | None = "X-Canarist-Canary"


@dataclass(frozen=True)
class Member:
    """An instance as the router sees it."""

    instance_id: str
    release: str
    host: str
    port: int
    # "draining": finishes what it has, takes no new requests (sticky clients excepted).
    state: Literal["active", "draining"] = "active"


@dataclass(frozen=True)
class RouteTable:
    """The desired routing of one service."""

    members: tuple[Member, ...]
    weights: Mapping[str, int]  # release -> percent of traffic (0..100)
    canary: str | None = None  # release that the canary header forces
    # Release -> what a router that splits by release rather than by instance points at
    # (a target group ARN, a Lambda version, an API Gateway deployment id, a record value).
    # HAProxy routes to members and ignores it.
    targets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleaseCounters:
    """Cumulative request outcomes of one release, as seen by the router."""

    requests: int = 0
    errors_5xx: int = 0
    connection_errors: int = 0
    extra: Mapping[str, int] = field(default_factory=dict)


class Router(Protocol):
    """Splits traffic. Every call is idempotent: it converges the data plane to what is asked."""

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Run the data plane for these services: write its config, start it or adopt the
        running one, restart it if it died (with the last applied tables), reload only when
        the shape of the services changed. Never called for a weight change."""

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge one service's members, states and weights to `table`, without a reload."""

    async def read_weights(self, service: str) -> dict[str, float]:
        """The effective traffic share per release (percent), read back from the data plane."""

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """Requests in flight on that member now (0 when it is not routed)."""

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Request outcomes per release since the router started routing to it."""

    async def stop(self) -> None:
        """Stop the data plane."""
