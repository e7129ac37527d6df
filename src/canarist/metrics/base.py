"""The `Metrics` protocol: what each release's requests did, in near real time."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ReleaseWindow:
    """One release's request outcomes, as one snapshot saw them.

    Counts are cumulative since the service's window began and never decrease from one
    snapshot to the next. Latencies are fresh: those logged since the service's previous
    snapshot, so that a long window does not hand out an ever-growing sample.
    """

    requests: int  # attempts routed to the release's instances
    # Attempts that failed: a 5xx answer (the app's, or HAProxy's 502/503/504 for it), a
    # connection error, a timeout, a response cut short.
    failures: int
    # A uniform sample, bounded however high the traffic, of the latencies (milliseconds)
    # of successful requests the traffic split sent (not those clients asked for) logged
    # since the previous snapshot; in no particular order.
    latencies_ms: tuple[float, ...]
    latency_count: int  # how many latencies that sample was drawn from
    at: float  # time.monotonic() when the counts were read from the data plane (0: never)
    # Of `requests` and `failures`, those clients sent to the release themselves (the
    # canary header), not the traffic split: testers' requests, no random sample. 0 from
    # a provider that cannot tell.
    requested: int = 0
    requested_failures: int = 0
    # Of `requests` and `failures`, those a sticky service's cookie kept on the release
    # its client's first request went to: the client chose, not the split. 0 from a
    # provider that cannot tell.
    pinned: int = 0
    pinned_failures: int = 0


class Metrics(Protocol):
    """Per-release request outcomes of a service, read from the data plane.

    A window starts when the provider does, and again at each `reset` of the service, so
    an analysis counts from the moment its canary starts. Each snapshot hands out the
    latencies logged since the previous one, once: a service's snapshots are meant for
    one reader, its analysis. A release with no traffic may be absent from a snapshot or
    present with zeros; a service the provider knows nothing of gives an empty snapshot,
    not an error. Counts are late by at most the provider's stated polling interval;
    `at` says how old they are, and stops moving while the data plane does not answer.
    """

    async def start(self) -> None:
        """Begin collecting (idempotent)."""

    async def stop(self) -> None:
        """Stop collecting and release what `start` took (idempotent)."""

    async def snapshot(self, service: str) -> dict[str, ReleaseWindow]:
        """Each release's outcomes: counts in the window, latencies since the last call."""

    async def reset(self, service: str) -> None:
        """Start a new window for every release of the service, from this moment."""


# How many of each release's latest latencies a provider with history keeps, at most:
# a canary alone is compared with each once, then held to a bound on their median,
# which tightens as sqrt(1 / RECENT_LATENCIES).
RECENT_LATENCIES = 16_384


@runtime_checkable
class KeepsHistory(Protocol):
    """A provider that remembers each release's counts of the last minutes and its latest
    latencies, whatever the windows: the baseline's rate and latencies before, for a
    canary that then takes all the traffic (nothing runs beside it to compare with)."""

    async def recent(self, service: str, release: str, seconds: float) -> tuple[int, int] | None:
        """Requests and failures of the release over the last `seconds` (or as much of
        them as the provider saw), or None when it has seen nothing of the release."""

    async def recent_latencies(
        self, service: str, release: str, seconds: float
    ) -> tuple[float, ...]:
        """The latencies (ms) of the release's latest successful requests within the last
        `seconds`, up to RECENT_LATENCIES, oldest first; () when the provider sees no
        request latencies."""


@runtime_checkable
class ResumesWindows(Protocol):
    """A provider whose windows outlive the controller: a restarted controller takes up
    the window its predecessor started, so the counts include what was served while no
    controller ran."""

    async def resume(self, service: str) -> bool:
        """Take up the window last started for the service, counting on from then; when
        that cannot be done (the data plane counted afresh since), start a new one, as
        `reset` does, and say False."""


@runtime_checkable
class Attends(Protocol):
    """A provider that can measure the services no analysis reads now more cheaply (fewer
    request logs read), at full detail only those it is told about."""

    def attend(self, services: Collection[str]) -> None:
        """The services whose releases are judged now, replacing those told before."""


@runtime_checkable
class BindsTargets(Protocol):
    """A provider that must be told what each release is on the provider (CloudWatch)."""

    def bind(self, service: str, release: str, dimension_value: str) -> None:
        """Measure `release` by this target (a target group ARN, a Lambda version)."""

    def unbind(self, service: str, release: str) -> None:
        """Stop measuring a release that is gone."""


@runtime_checkable
class AlarmSource(Protocol):
    """A provider whose alarms can trigger a rollback (CloudWatch)."""

    async def alarms_firing(self, names: list[str]) -> list[str]:
        """The named alarms that are in ALARM now."""
