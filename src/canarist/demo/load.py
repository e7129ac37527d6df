"""Steady keep-alive HTTP load that counts every outcome: the demo's and the tests' witness."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadReport:
    """What the load saw."""

    sent: int = 0
    ok: int = 0
    failed: int = 0  # 5xx answers, connection errors and timeouts
    by_version: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # kind of failure -> count
    failed_by_version: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # of every answered request
    # Per version, when (wall clock) the last request that it answered was sent.
    last_sent: dict[str, float] = field(default_factory=dict)

    def latency(self, quantile: float) -> float:
        """A latency quantile in ms (0 when nothing was answered)."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def rate(self) -> float:
        """Requests per second over the run."""
        return self.sent / self.seconds if self.seconds else 0.0


class Load:
    """Sends GETs at a steady rate over a few keep-alive connections, in its own thread."""

    def __init__(
        self,
        url: str,
        rate: float = 250.0,
        connections: int = 8,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.rate = rate
        self.connections = connections
        self.timeout = timeout
        self.headers = headers or {}
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = 0.0

    def start(self) -> Load:
        """Begin sending."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadReport:
        """Stop and return the report (in-flight requests are finished first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        return self.snapshot()

    def snapshot(self) -> LoadReport:
        """A copy of the counts so far."""
        with self._lock:
            r = self.report
            seconds = r.seconds or (time.monotonic() - self._started if self._started else 0.0)
            return LoadReport(
                r.sent,
                r.ok,
                r.failed,
                Counter(r.by_version),
                Counter(r.failures),
                Counter(r.failed_by_version),
                seconds,
                list(r.latencies_ms),
                dict(r.last_sent),
            )

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        started = self._started = time.monotonic()
        interval = self.connections / self.rate
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self._worker(session, interval, i / self.rate))
                for i in range(self.connections)
            ]
            await asyncio.gather(*workers)
        with self._lock:
            self.report.seconds = time.monotonic() - started

    async def _worker(self, session: aiohttp.ClientSession, interval: float, offset: float) -> None:
        await asyncio.sleep(offset)
        next_at = time.monotonic()
        while not self._stop.is_set():
            sent_at, sent_wall = time.monotonic(), time.time()
            version, failure = await self._one(session)
            took_ms = (time.monotonic() - sent_at) * 1000
            with self._lock:
                r = self.report
                r.sent += 1
                r.last_sent[version] = max(r.last_sent.get(version, 0.0), sent_wall)
                if failure is None:
                    r.ok += 1
                    r.by_version[version] += 1
                    r.latencies_ms.append(took_ms)
                else:
                    r.failed += 1
                    r.failures[failure] += 1
                    r.failed_by_version[version] += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    async def _one(self, session: aiohttp.ClientSession) -> tuple[str, str | None]:
        try:
            async with session.get(self.url, headers=self.headers) as response:
                await response.read()
                version = response.headers.get("X-App-Version", "?")
                if response.status >= 500:
                    return version, f"http {response.status}"
                return version, None
        except TimeoutError:
            return "?", "timeout"
        except aiohttp.ClientError as exc:
            return "?", type(exc).__name__
