"""Per-release request outcomes from the HAProxy that a `HAProxyRouter` runs.

What is measured, and how:

- **Requests and failures** are HAProxy's own per-server counters from the Runtime API's
  `show stat`, as the router attributes them to releases (`HAProxyRouter.counters`): a
  server slot's counters in both of a service's backends are credited to the release the
  slot serves, the books of a slot closed the moment it changes hands, and what a HAProxy
  process counted banked when it is restarted or reloaded. A task the provider owns reads
  them every `interval` (0.2 s by default) through `HAProxyRouter.routed_counters`, which
  waits for a routing change in progress to finish rather than read halfway through it.

  `requests` is `stot`: every attempt routed to the release, retried ones included.
  `failures` is `hrsp_5xx + econ + eresp + wretr + wredis`, at most `requests`:

  - `hrsp_5xx`: 5xx answers from the app;
  - `econ`: connections that failed after the last retry (the client got HAProxy's 503);
  - `eresp`: timeouts waiting for the app (HAProxy's 504), junk or empty answers (502),
    answers the app cut short; HAProxy counts none of these in the server's `hrsp_5xx`;
  - `wretr`, `wredis`: attempts that failed and that HAProxy retried, on the same server or
    another: the client may never have seen them fail, but a release that refuses
    connections must not look clean because the stable release took its traffic.

  HAProxy 2.6 counts an attempt retried after a junk or empty answer in `eresp` and twice
  in `wretr`: such attempts count up to three times, which the cap at `requests` bounds.
  Otherwise the counts are exact, bar what a crashing HAProxy counted after the last
  read. Should the router's figures ever fall (it adopted a HAProxy whose past it never
  saw), the provider keeps its totals and counts on from the new figures: never back.
  The router keeps its books on disk, and where each service's window began is saved
  too, so a restarted controller that adopts the same HAProxy process takes the window up
  (`resume`) and counts what was served while no controller ran. The history behind
  `recent` and `recent_latencies` is saved every HISTORY_SAVE_EVERY seconds (when it
  moved) and taken up the same way, so it reaches back past the restart, bar the last
  seconds before it.

  What went through the service's canary-header backend is also counted apart
  (`requested`, `requested_failures`): requests clients chose to send to the release,
  testers' mostly, which the judge must not take for a random sample of the traffic. So
  is what went through a sticky service's pinned backend (`pinned`, `pinned_failures`):
  requests its cookie kept on the release its client's first request went to. For the
  same reason their log lines give no latency samples (the pinned backend logs none).

- **Latency** comes from HAProxy's request logs (`option httplog`), which the router
  sends, when built with `log_target=log_target(state_dir)`, to a unix datagram socket
  that this provider binds at `<state_dir>/logs.sock` and reads. Each line gives the
  backend and server (so the release), the status code, the termination state, `Tr`
  (time to the app's response headers) and `Ta` (the request's active time, from its
  first byte to the response's last byte, without the keep-alive idle time that `Tt`
  includes). A latency sample is `Ta` of a request that got an answer from the app
  (`Tr` >= 0) and did not fail, so that errors and latency are separate evidence: a quick
  500 does not make a release look fast, and a timeout counts once, as a failure.

  A logged request failed if its status is 5xx, or if its termination state's first
  letter blames the server side: `S` (the server refused, reset or aborted: `SC`, `SH`,
  `SD`), `s` (a server timeout: `sC`, `sH`, `sD`) or `D` (killed as its server went down).
  Client aborts and client timeouts (`C`, `c`) are the client's doing, not the release's.

- **Sampling.** Between two snapshots each release keeps a uniform sample of at most
  `reservoir_size` latencies (Vitter's Algorithm R), so memory stays bounded at any rate;
  `latency_count` says how many it was drawn from. Reading a log line costs the
  controller some 30-40 µs of CPU, a third of a core at 8,000 requests a second, which on
  a small machine is taken from the instances. So when traffic is high, HAProxy logs
  only a random share of the requests each release answers: about once a second the
  provider sets the shares (`log_shares`, per server slot, through the router's maps, no
  reload) to keep a service's lines near `log_lines` a second (1,000), but a release
  keeps up to `log_lines_per_release` (100) of its own, so a small canary beside a large
  stable is not starved. That is for the services whose rollouts are judged now; the
  controller says which (`attend`), and the others, once each of their releases holds
  its `latest_kept` latest latencies (the history a later rollout is held to), get
  `idle_log_lines` (100) a second in all, enough to keep it current. The draw ignores the
  request's outcome, so each release's sample stays uniform, and the counts, which come
  from the counters, stay exact.
  (`log_target(state_dir, sample=N)` fixes one share for everything in the config.)
  The kernel queues few datagrams on a unix socket
  (`net.unix.max_dgram_qlen`, as low as 10): lines HAProxy could not send while the
  event loop was busy are lost, counted by HAProxy as DroppedLogs (`stats.dropped_logs`),
  and only thin the sample.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import stat
import time
from array import array
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from canarist.errors import DriverError, RouterError
from canarist.metrics.base import RECENT_LATENCIES, ReleaseWindow
from canarist.routers.base import ReleaseCounters
from canarist.routers.haproxy import (
    HAProxyRouter,
    backend_name,
    canary_backend_name,
    pinned_backend_name,
    read_json,
    write_atomic,
)

log = logging.getLogger(__name__)

LOG_SOCKET = "logs.sock"
WINDOWS_FILE = "metrics-windows.json"
HISTORY_FILE = "metrics-history.json"
LATENCIES_FILE = "metrics-latencies.json"
# The kernel's sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
# HAProxy's longest log line is 1024 bytes unless told otherwise ("len").
_MAX_DATAGRAM = 65536
# Datagrams read per wake-up: enough to empty the queue, few enough not to starve the loop.
_READ_BATCH = 256
_RECEIVE_BUFFER = 1 << 20
_SLOT = re.compile(r"^s(\d+)$")
_NO_SERVER = "<NOSRV>"

# `option httplog`: %ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc
# %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r, after an optional syslog header. Only the
# fields up to the retries are read: a line cut at HAProxy's length limit still parses.
_ACCEPT_DATE = r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d{3}\]"
_REQUEST_LINE = re.compile(
    r"(?<!\S)\S+:\d+ " + _ACCEPT_DATE + r" \S+ (?P<backend>[^\s/]+)/(?P<server>\S+)"
    r" -?\d+/-?\d+/-?\d+/(?P<tr>-?\d+)/\+?(?P<ta>-?\d+)"
    r" (?P<status>-?\d+) \+?-?\d+ \S+ \S+ (?P<term>[A-Za-z-]{4})"
    r" \d+/\d+/\d+/\d+/(?P<redispatched>\+?)(?P<retries>\d+)(?:\s|$)"
)
_LOOKS_LIKE_REQUEST = re.compile(r"(?<!\S)\S+:\d+ " + _ACCEPT_DATE + " ")
# First letter of the termination state that puts the blame on the server side.
_SERVER_SIDE = frozenset("SsD")


class MalformedLog(ValueError):
    """A request log line whose fields could not be read."""


@dataclass(frozen=True)
class RequestLog:
    """What HAProxy logged about one request."""

    backend: str
    server: str | None  # None when no server was picked (<NOSRV>)
    status: int  # -1 when no answer was sent
    termination: str  # the session state at disconnection, e.g. "----", "sH--", "SC--"
    response_ms: int  # Tr: until the app's response headers; -1 when there were none
    active_ms: int  # Ta: from the request's first byte to the response's last
    retries: int
    redispatched: bool

    @property
    def failed(self) -> bool:
        """True for a 5xx, a server-side error or a server timeout."""
        return self.status >= 500 or self.termination[0] in _SERVER_SIDE


def parse_request_log(text: str) -> RequestLog | None:
    """The request logged in one line (raw or syslog-framed); None for a line that is not
    a request log (server state changes, proxy start-up). Raises MalformedLog."""
    match = _REQUEST_LINE.search(text)
    if match is None:
        if _LOOKS_LIKE_REQUEST.search(text):
            raise MalformedLog(f"unreadable request log: {text[:200]!r}")
        return None
    server = match["server"]
    return RequestLog(
        backend=match["backend"],
        server=None if server == _NO_SERVER else server,
        status=int(match["status"]),
        termination=match["term"],
        response_ms=int(match["tr"]),
        active_ms=int(match["ta"]),
        retries=int(match["retries"]),
        redispatched=match["redispatched"] == "+",
    )


def log_target(state_dir: Path, *, sample: int = 1) -> str:
    """The `log_target` of a HAProxyRouter on `state_dir` whose logs this provider reads;
    with `sample` N, HAProxy sends one request line in N."""
    if sample < 1:
        raise ValueError(f"sample must be 1 or more, not {sample}")
    path = state_dir.resolve() / LOG_SOCKET
    address = str(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX or any(c.isspace() or c in "#\"'\\" for c in address):
        # HAProxy runs from its state dir: a path its config cannot carry is named from there.
        address = f"unix@{LOG_SOCKET}"
    target = f"{address} format raw"
    if sample > 1:
        target += f" sample 1:{sample}"
    return target


class Reservoir:
    """A uniform random sample of at most `size` values of a stream (Vitter's Algorithm R)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.seen = 0
        self._values: list[float] = []
        self._rng = rng

    def add(self, value: float) -> None:
        """Offer one value; it is kept with probability size/seen."""
        self.seen += 1
        if len(self._values) < self.size:
            self._values.append(value)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self._values[j] = value

    def values(self) -> tuple[float, ...]:
        """The sample, in no particular order."""
        return tuple(self._values)


@dataclass(frozen=True)
class Tally:
    """Cumulative requests and failures, and the parts of them clients chose."""

    requests: int = 0
    failures: int = 0
    requested: int = 0  # of the requests, those sent to the release by the canary header
    requested_failures: int = 0
    pinned: int = 0  # of the requests, those a sticky service's cookie routed
    pinned_failures: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(self.counts(), other.counts(), strict=True)))

    def __sub__(self, other: Tally) -> Tally:
        return Tally(*(a - b for a, b in zip(self.counts(), other.counts(), strict=True)))

    def below(self, other: Tally) -> bool:
        """True if any count is lower than in `other` (counters restarted)."""
        return any(a < b for a, b in zip(self.counts(), other.counts(), strict=True))

    def counts(self) -> tuple[int, int, int, int, int, int]:
        """The counts in field order (`astuple`, without its deep copy: this is hot)."""
        return (
            self.requests,
            self.failures,
            self.requested,
            self.requested_failures,
            self.pinned,
            self.pinned_failures,
        )


@dataclass(frozen=True)
class CollectionStats:
    """How well the provider sees the data plane."""

    polls: int  # successful counter reads
    poll_errors: int  # reads that failed (HAProxy down or deaf)
    mean_poll_s: float  # mean duration of a successful read
    lines: int  # log datagrams received
    malformed: int  # request log lines that could not be read
    unattributed: int  # logged requests no release could be named for
    dropped_logs: int  # log lines HAProxy could not send (the socket's queue was full)


def failure_tally(requests: int, errors_5xx: int, connection_errors: int) -> Tally:
    """Attempts and failed attempts; failures capped at attempts (see the module docstring)."""
    return Tally(requests, min(requests, errors_5xx + connection_errors))


def counters_tally(counters: ReleaseCounters) -> Tally:
    """A release's tally from the router's counters, the canary header's and the sticky
    cookie's parts included."""
    extra = counters.extra
    asked, pinned = (
        failure_tally(
            extra.get(part, 0),
            extra.get(f"{part}_5xx", 0),
            extra.get(f"{part}_connection_errors", 0),
        )
        for part in ("requested", "pinned")
    )
    total = failure_tally(counters.requests, counters.errors_5xx, counters.connection_errors)
    return replace(
        total,
        requested=asked.requests,
        requested_failures=asked.failures,
        pinned=pinned.requests,
        pinned_failures=pinned.failures,
    )


# How long, and how finely, each release's totals are remembered for `recent`.
HISTORY_SECONDS = 900.0
HISTORY_STEP = 1.0
# How often that history, and each release's latest latencies (a bigger file), are saved
# for a controller after this one.
HISTORY_SAVE_EVERY = 15.0
LATENCIES_SAVE_EVERY = 60.0


# Log lines a second a service's requests may cost, about, under heavy traffic; a release
# keeps up to LOG_LINES_PER_RELEASE of its own (see `log_shares`).
LOG_LINES = 1000.0
LOG_LINES_PER_RELEASE = 100.0
# The same for a service no analysis reads now (see `attend`), release and service alike:
# enough for the latest RECENT_LATENCIES latencies to span the last minutes, once they
# are had: until then, the service is logged as if judged.
IDLE_LOG_LINES = 100.0


def log_shares(
    rates: Mapping[str, float],
    *,
    lines: float = LOG_LINES,
    per_release: float = LOG_LINES_PER_RELEASE,
) -> dict[str, int]:
    """Per release, the per mille of its requests to log, from each release's requests a
    second: all of them while the service has up to `lines` a second in all; above, the
    same share of every release, for about `lines` lines a second, except that a release
    keeps up to `per_release` lines a second (a small canary beside a large stable)."""
    total = sum(rates.values())
    shares = {}
    for release, rate in rates.items():
        share = 1.0
        if total > lines and rate > 0:
            share = min(1.0, max(lines / total, per_release / rate))
        shares[release] = max(1, math.ceil(1000 * share))
    return shares


@dataclass
class _Service:
    seen: dict[str, Tally] = field(default_factory=dict)  # the router's figures, last read
    totals: dict[str, Tally] = field(default_factory=dict)  # since the provider started
    base: dict[str, Tally] = field(default_factory=dict)  # totals when the window began
    latency: dict[str, Reservoir] = field(default_factory=dict)  # since the last snapshot
    # (time.monotonic(), totals) about every HISTORY_STEP, oldest first.
    history: deque[tuple[float, dict[str, Tally]]] = field(default_factory=deque)
    # Each release's latest latencies, whatever the windows and snapshots.
    latest: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)  # (when, ms)
    thinned_at: float = float("-inf")  # when the share of requests logged was last set

    def remember(self, at: float) -> None:
        """Keep the totals as of `at` (at most one entry per HISTORY_STEP)."""
        history = self.history
        if history and at - history[-1][0] < HISTORY_STEP:
            return
        history.append((at, dict(self.totals)))
        while len(history) > 1 and history[1][0] <= at - HISTORY_SECONDS:
            history.popleft()

    def fallen(self) -> dict[str, Tally]:
        """Per release, what the totals count beyond the router's figures: what those
        figures lost when they fell (nothing, mostly). Saved history is in the router's
        figures, so that a provider after this one can put it beside its own."""
        apart = {r: t - self.seen.get(r, Tally()) for r, t in self.totals.items()}
        return {r: t for r, t in apart.items() if t != Tally()}


class HAProxyMetrics:
    """Per-release outcomes from a HAProxyRouter's HAProxy: counters read from `show stat`
    every `interval`, latencies from its request logs (see the module docstring)."""

    def __init__(
        self,
        router: HAProxyRouter,
        *,
        interval: float = 0.2,
        reservoir_size: int = 1024,
        seed: int | None = None,
        log_lines: float = LOG_LINES,
        log_lines_per_release: float = LOG_LINES_PER_RELEASE,
        idle_log_lines: float = IDLE_LOG_LINES,
        latest_kept: int = RECENT_LATENCIES,
        history_save_every: float = HISTORY_SAVE_EVERY,
        latencies_save_every: float = LATENCIES_SAVE_EVERY,
    ) -> None:
        self.router = router
        self.socket_path = router.state_dir / LOG_SOCKET
        # Where each service's window started, in the router's figures (`resume`).
        self._windows_path = router.state_dir / WINDOWS_FILE
        # The history `recent` and `recent_latencies` read, saved every `history_save_every`
        # seconds and taken up by a provider after this one (see `_take_up_history`).
        self._history_path = router.state_dir / HISTORY_FILE
        self._latencies_path = router.state_dir / LATENCIES_FILE
        self.history_save_every = history_save_every
        self.latencies_save_every = latencies_save_every
        self._history_saved_at = self._latencies_saved_at = 0.0
        self._history_saved_for = self._latencies_saved_for = 0  # requests, log lines then
        self._history_taken_up = False
        self.interval = interval
        self.reservoir_size = reservoir_size
        self.log_lines = log_lines
        self.log_lines_per_release = log_lines_per_release
        self.idle_log_lines = idle_log_lines
        self.latest_kept = latest_kept  # latencies per release, for `recent_latencies`
        # The services judged now (`attend`); None until told: all of them.
        self._attended: frozenset[str] | None = None
        self._rng = random.Random(seed)
        self._services: dict[str, _Service] = {}
        self._backends: dict[str, str] = {}  # backend name -> service
        # The services' canary-header and pinned backends: clients chose their releases.
        self._requested_backends: set[str] = set()
        self._releases: dict[tuple[str, int], str] = {}  # (service, slot) -> release, or last
        self._read_at = 0.0
        self._poll_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._polls = 0
        self._poll_errors = 0
        self._poll_time = 0.0
        self._lines = 0
        self._malformed = 0
        self._unattributed = 0
        self._pid: str | None = None
        self._dropped_before = 0  # DroppedLogs of earlier HAProxy processes
        self._dropped_now = 0

    @property
    def stats(self) -> CollectionStats:
        """Figures on the collection itself, for diagnosis."""
        return CollectionStats(
            polls=self._polls,
            poll_errors=self._poll_errors,
            mean_poll_s=self._poll_time / self._polls if self._polls else 0.0,
            lines=self._lines,
            malformed=self._malformed,
            unattributed=self._unattributed,
            dropped_logs=self._dropped_before + self._dropped_now,
        )

    async def start(self) -> None:
        """Bind the log socket and read the counters every `interval` from now on; a
        HAProxy not running yet is no error (its counts start with it)."""
        if self._task is not None:
            return
        self._sock = _bind_datagram(self.socket_path)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        self._task = asyncio.create_task(self._poll_forever(), name="haproxy-metrics")

    async def stop(self) -> None:
        """Stop polling, close the log socket and remove it. What the history gained since
        it was last saved is saved now, after a last read of the counters if HAProxy still
        answers: a controller stopped to be upgraded or restarted loses none of it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._history_saved_at = self._latencies_saved_at = float("-inf")  # now due
            try:
                await self.poll()  # which saves as it ends
            except RouterError:
                if self._polls:
                    self._save_history(time.monotonic())
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def attend(self, services: Collection[str]) -> None:
        """Read the requests of these services at full detail (`log_lines` a second each),
        and of the others only `idle_log_lines` a second once each of their releases holds
        its `latest_kept` latest latencies: their latencies serve only as the history a
        later rollout is held to, and reading log lines is most of what the provider
        costs. A service newly attended gets its new shares at the next poll."""
        attended = frozenset(services)
        if self._attended is not None:
            for service in attended - self._attended:
                books = self._services.get(service)
                if books is not None:
                    books.thinned_at = float("-inf")
        self._attended = attended

    async def reset(self, service: str) -> None:
        """Start the service's window now: the counters are read first (if HAProxy does
        not answer, the window starts at the last read), latencies logged so far dropped.
        Where it starts, in the router's figures, is saved for a controller after this one
        (`resume`)."""
        with contextlib.suppress(RouterError):
            await self.poll()
        books = self._services.setdefault(service, _Service())
        books.base = dict(books.totals)
        books.latency.clear()
        starts = self._load_window_starts()
        starts[service] = dict(books.seen)
        saved = {name: {r: t.counts() for r, t in st.items()} for name, st in starts.items()}
        write_atomic(self._windows_path, json.dumps(saved) + "\n")

    async def resume(self, service: str) -> bool:
        """Take up the window a controller before this one started for the service (see
        `reset`), so that its counts include what was served while no controller ran:
        possible when the router counts on from that controller's figures (it adopted the
        same HAProxy process, `HAProxyRouter.counts_continued`). Otherwise start a new
        window, as `reset`, and say False. Latencies logged meanwhile are not had."""
        with contextlib.suppress(RouterError):
            await self.poll()
        start = self._load_window_starts().get(service)
        books = self._services.setdefault(service, _Service())
        seen = books.seen
        if (
            start is None
            or not self.router.counts_continued
            or not seen
            or any(seen.get(r, Tally()).below(t) for r, t in start.items())
        ):
            await self.reset(service)
            return False
        # The window's counts are the router's figures since its start; the totals (the
        # provider's own) differ from those figures by what fell before, if anything.
        books.base = {
            r: books.totals.get(r, Tally()) - (seen.get(r, Tally()) - start.get(r, Tally()))
            for r in seen
        }
        books.latency.clear()
        return True

    def _save_history(self, now: float) -> None:
        """For a provider after this one, when they moved: every history_save_every
        seconds each service's history of totals, in the router's figures; every
        latencies_save_every seconds each release's latest latencies (float32, with when
        they came)."""
        if now - self._history_saved_at >= self.history_save_every:
            self._history_saved_at = now
            requests = sum(t.requests for b in self._services.values() for t in b.totals.values())
            if requests != self._history_saved_for:
                self._history_saved_for = requests
                history: dict[str, object] = {}
                for name, books in self._services.items():
                    apart = books.fallen()
                    history[name] = [
                        [
                            at,
                            {
                                r: (t - apart[r] if r in apart else t).counts()
                                for r, t in kept.items()
                            },
                        ]
                        for at, kept in books.history
                    ]
                write_atomic(self._history_path, json.dumps(history) + "\n")
        if now - self._latencies_saved_at >= self.latencies_save_every:
            self._latencies_saved_at = now
            if self._lines != self._latencies_saved_for:
                self._latencies_saved_for = self._lines
                latest = {
                    name: {
                        r: [
                            base64.b64encode(array("d", [at for at, _ in kept]).tobytes()).decode(),
                            base64.b64encode(array("f", [ms for _, ms in kept]).tobytes()).decode(),
                        ]
                        for r, kept in books.latest.items()
                    }
                    for name, books in self._services.items()
                }
                write_atomic(self._latencies_path, json.dumps(latest) + "\n")

    def _take_up_history(self) -> None:
        """Put the history a provider before this one saved (`_save_history`) ahead of this
        one's: the router counts on from that provider's figures (same HAProxy process), so
        `recent` reaches back past the controller's restart. Times are time.monotonic(),
        the same for every process since the machine started (and HAProxy with it)."""
        histories = read_json(self._history_path)
        latencies = read_json(self._latencies_path)
        try:
            saved_history = {
                name: [(float(at), _tallies(totals)) for at, totals in entries]
                for name, entries in histories.items()
            }
            saved_latest = {
                name: {
                    r: list(zip(_floats("d", ats), _floats("f", mss), strict=True))
                    for r, (ats, mss) in releases.items()
                }
                for name, releases in latencies.items()
            }
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed saved history: %s", exc)
            return
        for name, history in saved_history.items():
            books = self._services.setdefault(name, _Service())
            apart = books.fallen()
            books.history.extendleft(
                (at, {r: t + apart.get(r, Tally()) for r, t in totals.items()})
                for at, totals in reversed(history)
            )
        for name, latest in saved_latest.items():
            books = self._services.setdefault(name, _Service())
            for release, kept in latest.items():
                mine = books.latest.get(release, ())
                books.latest[release] = deque([*kept, *mine], maxlen=self.latest_kept)

    def _load_window_starts(self) -> dict[str, dict[str, Tally]]:
        try:
            return {name: _tallies(start) for name, start in read_json(self._windows_path).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring malformed %s: %s", self._windows_path, exc)
            return {}

    async def recent(self, service: str, release: str, seconds: float) -> tuple[int, int] | None:
        """The release's requests and failures over the last `seconds` as of the last read
        (over less when the provider has not been reading that long; at most
        HISTORY_SECONDS), or None when no read has seen it."""
        books = self._services.get(service)
        if books is None or release not in books.totals:
            return None
        now = books.totals[release]
        since = Tally()
        cut = self._read_at - seconds
        for at, totals in books.history:  # the oldest entry inside the span
            if at >= cut:
                since = totals.get(release, Tally())
                break
        count = now - since
        return count.requests, count.failures

    async def recent_latencies(
        self, service: str, release: str, seconds: float
    ) -> tuple[float, ...]:
        """The release's latest `latest_kept` logged latencies of the last `seconds`,
        oldest first."""
        books = self._services.get(service)
        latest = books.latest.get(release, ()) if books else ()
        cut = time.monotonic() - seconds
        return tuple(ms for at, ms in latest if at >= cut)

    async def snapshot(self, service: str) -> dict[str, ReleaseWindow]:
        """Each release's counts in the window, as of the last read, and the latencies
        logged since the previous snapshot. Routed releases appear, with zeros if idle."""
        routed = set(self._refresh_routes(service).get(service, {}).values())
        books = self._services.get(service, _Service())
        windows: dict[str, ReleaseWindow] = {}
        for release in sorted(set(books.totals) | set(books.latency) | routed):
            count = books.totals.get(release, Tally()) - books.base.get(release, Tally())
            sample = books.latency.pop(release, None)
            if count == Tally() and sample is None and release not in routed:
                continue  # a release of an earlier window, gone since
            windows[release] = ReleaseWindow(
                requests=count.requests,
                failures=count.failures,
                requested=count.requested,
                requested_failures=count.requested_failures,
                pinned=count.pinned,
                pinned_failures=count.pinned_failures,
                latencies_ms=sample.values() if sample else (),
                latency_count=sample.seen if sample else 0,
                at=self._read_at,
            )
        return windows

    async def poll(self) -> None:
        """Read the counters now (the provider's task does so every `interval`).

        Raises RouterError when HAProxy does not answer.
        """
        async with self._poll_lock:
            started = time.monotonic()
            info = await self.router.runtime.info()
            read = await self.router.routed_counters()
            read_at = time.monotonic()
            if not self._history_taken_up and self.router.pid is not None:
                self._history_taken_up = True
                if self.router.counts_continued:
                    self._take_up_history()
            for service, releases in read.items():
                books = self._services.setdefault(service, _Service())
                for release, c in releases.items():
                    now = counters_tally(c)
                    last = books.seen.get(release, Tally())
                    # Figures that fell are counted on from, never subtracted.
                    if not now.below(last):
                        books.totals[release] = books.totals.get(release, Tally()) + (now - last)
                    books.seen[release] = now
                books.remember(read_at)
                await self._thin_logs(service, books, read_at)
            if info.get("Pid") != self._pid:
                self._pid = info.get("Pid")
                self._dropped_before += self._dropped_now
            self._dropped_now = _int(info.get("DroppedLogs"))
            self._read_at = read_at
            self._polls += 1
            self._poll_time += read_at - started
            self._save_history(read_at)

    async def _thin_logs(self, service: str, books: _Service, now: float) -> None:
        """About once a second, set the share of the requests each slot of the service
        answers that HAProxy logs, from its release's request rate over the last second or
        two (see `log_shares`)."""
        if now - books.thinned_at < HISTORY_STEP:
            return
        books.thinned_at = now
        then = next((e for e in reversed(books.history) if e[0] <= now - HISTORY_STEP), None)
        if then is None or now <= then[0]:
            return
        seconds = now - then[0]
        rates = {
            release: (total.requests - then[1].get(release, Tally()).requests) / seconds
            for release, total in books.totals.items()
        }
        filled = all(
            len(books.latest.get(release, ())) >= self.latest_kept
            for release, rate in rates.items()
            if rate > 0
        )
        if self._attended is None or service in self._attended or not filled:
            lines, per_release = self.log_lines, self.log_lines_per_release
        else:
            lines = per_release = self.idle_log_lines
        want = log_shares(rates, lines=lines, per_release=per_release)
        have = self.router.log_shares(service)
        slots = self.router.slot_releases(service).get(service, {})
        # A slot's share changes when it is off by a quarter or more, or back to all:
        # not a Runtime API call every second.
        changed = {
            k: share
            for k, share in ((k, want.get(slots.get(k, ""), 1000)) for k in have)
            if share != have[k] and (share == 1000 or abs(share - have[k]) >= have[k] / 4)
        }
        if changed:
            try:
                await self.router.set_log_shares(service, changed)
            except RouterError as exc:
                log.warning("cannot set the share of %s's requests logged: %s", service, exc)

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            started = time.monotonic()
            try:
                await self.poll()
            except RouterError as exc:
                self._poll_errors += 1
                if not failing:
                    # Before the first read, HAProxy is most likely still to be started.
                    level = logging.WARNING if self._polls else logging.INFO
                    log.log(level, "cannot read HAProxy's counters: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("reading HAProxy's counters again")
                failing = False
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def _refresh_routes(self, service: str | None = None) -> dict[str, dict[int, str]]:
        """Learn which release each slot of every service (or of that one) serves now, and
        return that; a freed slot keeps naming its last one, so the requests a drained
        member finishes stay its release's."""
        routes = self.router.slot_releases(service)
        for name, slots in routes.items():
            self._backends[backend_name(name)] = name
            self._backends[canary_backend_name(name)] = name
            self._requested_backends.add(canary_backend_name(name))
            self._backends[pinned_backend_name(name)] = name
            self._requested_backends.add(pinned_backend_name(name))
            for k, release in slots.items():
                self._releases[(name, k)] = release
        return routes

    # -- logs ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        # Once per wake-up: a line is credited to the slot's release of a few ms ago at worst,
        # and stamped with the time of the wake-up.
        self._refresh_routes()
        now = time.monotonic()
        for _ in range(_READ_BATCH):
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("cannot read HAProxy's logs: %s", exc)
                return
            self._take(data.decode("utf-8", "replace"), now)

    def _take(self, text: str, now: float) -> None:
        self._lines += 1
        try:
            entry = parse_request_log(text)
        except MalformedLog:
            self._malformed += 1
            if self._malformed == 1:
                log.warning("unreadable HAProxy request log: %r", text[:200])
            return
        if entry is None or entry.failed or entry.response_ms < 0:
            return
        slot = _SLOT.match(entry.server or "")
        service = self._backends.get(entry.backend)
        release = self._releases.get((service, int(slot[1]))) if service and slot else None
        if service is None or release is None:
            self._unattributed += 1
            return
        if entry.backend in self._requested_backends:
            return  # chosen by clients, not by the split: no sample of the release's latency
        books = self._services.setdefault(service, _Service())
        sample = books.latency.get(release)
        if sample is None:
            sample = books.latency[release] = Reservoir(self.reservoir_size, self._rng)
        sample.add(float(entry.active_ms))
        latest = books.latest.get(release)
        if latest is None:
            latest = books.latest[release] = deque(maxlen=self.latest_kept)
        latest.append((now, float(entry.active_ms)))


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _bind_datagram(path: Path) -> socket.socket:
    """A non-blocking unix datagram socket bound at `path`, only for its owner to write to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise DriverError(f"{path} exists and is not a socket")
        if _is_bound(path):
            raise DriverError(f"{path} is already read by another process")
        path.unlink()  # left by a run that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        # The queue of a unix datagram socket is capped in datagrams, not bytes; a larger
        # buffer still helps when lines are long.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        _at_path(path, sock.bind)
        # Whoever can write to the socket can forge outcomes: its owner only.
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise DriverError(f"cannot bind the log socket {path}: {exc}") from exc
    return sock


def _is_bound(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            _at_path(path, probe.connect)
        except OSError:
            return False
        return True


def _at_path(path: Path, call: Callable[[str], None]) -> None:
    """Call bind or connect with `path`, through its directory's descriptor when too long."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        call(str(path))
        return
    dir_fd = os.open(path.parent, os.O_PATH)
    try:
        call(f"/proc/self/fd/{dir_fd}/{path.name}")
    finally:
        os.close(dir_fd)


def _floats(kind: str, text: str) -> list[float]:
    """The floats (`kind` "d" or "f") that base64 `text` holds."""
    values: array[float] = array(kind)
    values.frombytes(base64.b64decode(text))
    return values.tolist()


def _tallies(saved: Mapping[str, list[int]]) -> dict[str, Tally]:
    """Per release, the tally saved as `Tally.counts` gave it (an older, shorter one too)."""
    return {release: Tally(*map(int, counts)) for release, counts in saved.items()}
