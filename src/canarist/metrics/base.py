"""The `Metrics` protocol: what each release's requests did, in near real time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReleaseWindow:
    """One release's request outcomes since its service's window began.

    Counts are cumulative and never decrease between two snapshots of one window, so a
    judge may difference snapshots to get per-interval figures.
    """

    requests: int  # attempts routed to the release's instances
    # Attempts that failed: a 5xx answer (the app's, or HAProxy's 502/503/504 for it), a
    # connection error, a timeout, a response cut short.
    failures: int
    # A uniform sample of the window's latencies of successful requests, in milliseconds,
    # in no particular order; bounded, however much traffic there was.
    latencies_ms: tuple[float, ...]
    latency_count: int  # how many latencies the sample was drawn from
    at: float  # time.monotonic() when the counts were read from the data plane


class Metrics(Protocol):
    """Per-release request outcomes of a service, read from the data plane.

    Windows: every count starts at `start`, and again at each `reset` of the service, so an
    analysis counts from the moment its canary starts. A release that had no traffic in
    the window may be absent from a snapshot, or present with zeros; a service the
    provider knows nothing of gives an empty snapshot, not an error. A snapshot is late
    by at most the provider's polling interval, stated by each provider; `at` says how old
    its counts are, and stops moving while the data plane does not answer.
    """

    async def start(self) -> None:
        """Begin collecting (idempotent)."""

    async def stop(self) -> None:
        """Stop collecting and release what `start` took (idempotent)."""

    async def snapshot(self, service: str) -> dict[str, ReleaseWindow]:
        """Each release's outcomes in the service's current window, by release."""

    def reset(self, service: str) -> None:
        """Start a new window for every release of the service: counts and samples from now."""
