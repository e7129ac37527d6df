"""The controller's engine: one tick advances every rollout and reconciles every service.

Crash safety comes from two rules. A step is recorded (with its effect on the desired
state) before anything acts on it, in one transaction. And everything that acts is a
convergence: the reconciler compares the desired state in the store with what runs and
what the router routes, and closes the gap with idempotent driver calls. A controller
killed at any point therefore resumes by simply ticking again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from canarist.controller.watch import EMPTY_WINDOW, Watch
from canarist.domain.plan import (
    Analyze,
    Pause,
    Plan,
    Promote,
    Scale,
    SetWeight,
    describe,
    plan_to_list,
)
from canarist.domain.rollout import (
    EXIT_CODES,
    Ended,
    Phase,
    PromoteRequested,
    Rollout,
    StepDone,
    transition,
)
from canarist.domain.spec import DeploymentSpec, ServiceSpec
from canarist.domain.strategies import compile_plan, override
from canarist.errors import BadInput, CanaristError, DriverError, RolloutInProgress
from canarist.metrics.base import (
    AlarmSource,
    Attends,
    BindsTargets,
    KeepsHistory,
    Metrics,
    ReleaseWindow,
    ResumesWindows,
)
from canarist.platforms.base import GroupPlatform, Instance, Platform
from canarist.routers.base import Member, Router, RouteTable, ServiceRoute
from canarist.store.records import InstanceRecord, ServiceState
from canarist.store.sqlite import SQLiteStore

log = logging.getLogger("canarist.controller")

# A scale step gives up after this many instances of the new release failed to start.
START_ATTEMPTS = 3
# How far back the baseline's rate is taken from when the canary takes all traffic.
REFERENCE_SECONDS = 600.0
# After a canary that took all the traffic is rolled back for failing or slowness, how
# long the old release is watched: if it does the same, the fault is likely a shared one.
AFTERMATH_SECONDS = 10.0
# The likelihood ratio (or one over a sign test's p-value) that settles, after such a
# rollback, whether the old release does what the canary did or what it did before;
# and the latencies a sign test needs at least.
AFTERMATH_EVIDENCE = 20.0
AFTERMATH_LATENCIES = 10


@dataclass(frozen=True)
class _Aftermath:
    """A rollback of a canary judged alone, whose old release is watched for a while:
    for failing more than it did (`before`: the bound on its rate then, that the canary
    exceeded), or for answering slower (`before`: its median latency then, in ms)."""

    rollout_id: int
    release: str  # the old release, serving again
    since: float
    on: Literal["errors", "latency"]
    canary: float  # the canary's error rate, or its median latency (ms)
    before: float
    seconds: float = AFTERMATH_SECONDS  # how long it is watched: less after a restart


@dataclass
class _Health:
    """In-memory health bookkeeping of one instance."""

    failures: int = 0
    last_probe: float = 0.0


@dataclass
class _ServiceRuntime:
    """What the engine keeps in memory per service; all of it can be rebuilt after a crash."""

    applied_weights: dict[str, int] | None = None
    start_failures: dict[str, int] = field(default_factory=dict)  # release -> failed starts
    last_start_error: dict[str, str] = field(default_factory=dict)
    window: dict[str, ReleaseWindow] = field(default_factory=dict)  # latest metrics snapshot
    watch: Watch | None = None  # the running rollout's analysis
    targets: dict[str, str] = field(default_factory=dict)  # group mode: release -> target
    healthy: dict[str, int] = field(default_factory=dict)  # group mode: release -> healthy
    last_analysis: dict[str, Any] | None = None  # of the last rollout that ended
    aftermath: _Aftermath | None = None  # a rollback whose old release is being watched


@dataclass(frozen=True)
class GroupDrivers:
    """The drivers of a service whose releases run as groups sized by the provider (AWS)."""

    platform: GroupPlatform
    router: Router
    metrics: Metrics | None = None


class Catalog(Protocol):
    """What the engine reads about releases."""

    def resolve(self, text: str) -> str:
        """The full reference for a reference, unique prefix or label; UnknownRelease if none."""

    def health(self, ref: str) -> str:
        """The release's own health path."""


class Engine:
    """Advances rollouts and reconciles services, one `tick` at a time."""

    def __init__(
        self,
        spec: DeploymentSpec,
        store: SQLiteStore,
        platform: Platform,
        router: Router,
        catalog: Catalog,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        groups: Mapping[str, GroupDrivers] | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.platform = platform
        self.router = router
        self.catalog = catalog
        self.clock = clock
        self.metrics = metrics
        # Services run by group platforms; every other service runs on `platform`/`router`.
        self.groups: dict[str, GroupDrivers] = dict(groups or {})
        self._ensured: set[str] = set()
        self._runtime: dict[str, _ServiceRuntime] = {
            name: _ServiceRuntime() for name in spec.services
        }
        self._health: dict[str, _Health] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # instance id -> start or stop task
        self._lock = asyncio.Lock()
        self._adopted = False
        self._stopping = False
        self._forgotten_at = 0.0
        self._warnings = _Warnings()
        # Per service, the store's `changes` when it was last found with no rollout running.
        self._no_rollout: dict[str, int] = {}
        self._last_routes: tuple[DeploymentSpec | None, int, list[ServiceRoute]] = (None, -1, [])
        self._health_paths: dict[str, str] = {}

    # -- commands ----------------------------------------------------------------------

    async def deploy(self, service: str, release: str, strategy: str | None = None) -> Rollout:
        """Start a rollout of `release`; BadInput when it cannot start (nothing changes then)."""
        svc = self.spec.service(service)
        strat = override(svc.strategy, strategy) if strategy else svc.strategy
        ref = self.catalog.resolve(release)
        await self.platform.prepare(ref)  # refuses unknown or tampered releases up front
        async with self._lock:
            state = self.store.service(service)
            first = state.stable is None
            plan = compile_plan(strat, svc.instances, first=first)
            return self._begin(state, ref, "initial" if first else strat.kind, plan)

    def _begin(self, state: ServiceState, ref: str, strategy: str, plan: Plan) -> Rollout:
        """Record a new rollout and its first step's desired state, in one transaction."""
        service = state.name
        if self.store.active_rollout(service) is not None:
            raise RolloutInProgress(
                f"a rollout of {service!r} is already running; promote, abort or wait for it"
            )
        if state.stable == ref:
            raise BadInput(f"{_short(ref)} is already the stable release of {service!r}")
        now = self.clock()
        rollout = Rollout(
            id=0,
            service=service,
            release=ref,
            previous=state.stable,
            strategy=strategy,
            plan=plan,
            step=0,
            step_started_at=now,
            phase="progressing",
            created_at=now,
        )
        with self.store.transaction():
            rollout = self.store.create_rollout(rollout)
            state.canary = ref
            state.retire_at.pop(ref, None)
            self._enter_step(state, rollout)
            self.store.save_service(state)
            self.store.record(
                service,
                "rollout.started",
                {
                    "release": ref,
                    "previous": state.stable,
                    "strategy": rollout.strategy,
                    "plan": plan_to_list(plan),
                },
                rollout.id,
            )
        self._runtime[service].start_failures.pop(ref, None)
        return rollout

    async def promote(self, service: str, full: bool = False) -> Rollout:
        """Pass the current pause (manual or timed), or with `full` skip to promotion."""
        self.spec.service(service)
        async with self._lock:
            rollout = self._require_active(service)
            after = transition(rollout, PromoteRequested(self.clock(), full=full))
            if after == rollout:
                raise BadInput(
                    f"{service!r} is at step {rollout.step + 1} ({_step_text(rollout)}), not at a"
                    " pause; use --full to finish the rollout now"
                )
            with self.store.transaction():
                state = self.store.service(service)
                self._enter_step(state, after)
                self.store.save_service(state)
                self.store.save_rollout(after)
                self.store.record(service, "rollout.promote_requested", {"full": full}, rollout.id)
            return after

    async def abort(self, service: str, reason: str = "aborted by hand") -> Rollout:
        """Stop the rollout, send all traffic back to stable and retire the canary."""
        self.spec.service(service)
        async with self._lock:
            return self._end(self._require_active(service), "aborted", reason)

    async def rollback(self, service: str, reason: str = "rolled back by hand") -> Rollout:
        """Mid-rollout: end it and restore stable. Otherwise: return to the previous release."""
        svc = self.spec.service(service)
        async with self._lock:
            active = self.store.active_rollout(service)
            if active is not None:
                return self._end(active, "rolled_back", reason)
            state = self.store.service(service)
            previous = state.previous
            if previous is None:
                raise BadInput(f"{service!r} has no previous release to roll back to")
        await self.platform.prepare(previous)
        async with self._lock:
            state = self.store.service(service)
            # All at once: a still-warm previous release takes traffic with one router
            # change. The release rolled back from stays warm in case this was a mistake.
            plan = (
                Scale("canary", svc.instances),
                SetWeight(100),
                Promote(svc.strategy.scale_down_delay),
            )
            return self._begin(state, previous, "rollback", plan)

    def replace_spec(self, spec: DeploymentSpec, groups: Mapping[str, GroupDrivers]) -> None:
        """Take a re-read spec (`canarist up` while running); services new to it get their
        drivers, services already running keep theirs."""
        for name in spec.services:
            self._runtime.setdefault(name, _ServiceRuntime())
        for name, drivers in groups.items():
            self.groups.setdefault(name, drivers)
        self.spec = spec

    def verify_log(self) -> int | None:
        """The id of the first audit entry whose hash chain is broken, or None."""
        return self.store.verify_log()

    def _require_active(self, service: str) -> Rollout:
        rollout = self.store.active_rollout(service)
        if rollout is None:
            raise BadInput(f"no rollout of {service!r} is running")
        return rollout

    # -- the loop ----------------------------------------------------------------------

    async def tick(self) -> None:
        """Advance every rollout one notch and converge every service."""
        async with self._lock:
            if self._stopping:
                return  # after shutdown nothing may be started again
            if not self._adopted:
                await self._adopt()
                self._adopted = True
            try:
                await self.router.ensure(self._routes())
                self._warnings.gone("router")
            except DriverError as exc:
                self._warnings.say("router", str(exc))
            now = self.clock()
            if now - self._forgotten_at > 60:
                # Ended instances, and the evidence of ended rollouts, are kept an hour for
                # `status` and debugging, then dropped (verdicts stay in the audit log).
                self.store.forget_instances(before=now - 3600)
                self.store.forget_observations(before=now - 3600)
                self._forgotten_at = now
            attended = []
            for name in self.spec.services:
                await self._read_metrics(name)
                # Asked again only after a write: none, no rollout can have begun.
                if self._no_rollout.get(name) != self.store.changes:
                    rollout = self.store.active_rollout(name)
                    if rollout is None:
                        self._no_rollout[name] = self.store.changes
                    else:
                        await self._advance(rollout)
                await self._read_aftermath(name)
                if name in self.groups:
                    await self._reconcile_group(name)
                else:
                    await self._reconcile(name)
                runtime = self._runtime[name]
                if runtime.watch is not None or runtime.aftermath is not None:
                    attended.append(name)
            if isinstance(self.metrics, Attends):
                # Only what is judged is read at full detail.
                self.metrics.attend(attended)

    async def run(self, stop: asyncio.Event, interval: float = 0.1) -> None:
        """Tick until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("tick failed; retrying")
            elapsed = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - elapsed))

    async def shutdown(self) -> None:
        """Stop every instance and the router (for `canarist down`)."""
        async with self._lock:
            self._stopping = True
            for task in list(self._tasks.values()):
                task.cancel()
            for name in self.spec.services:
                with contextlib.suppress(DriverError):
                    await self.router.apply(name, RouteTable(members=(), weights={}))
            await self.router.stop()
            records = self.store.instances()
            grace = {n: s.stop_grace for n, s in self.spec.services.items()}
            await asyncio.gather(
                *(self._stop_record(r, grace.get(r.service, 10.0)) for r in records),
                return_exceptions=True,
            )

    # -- rollouts ----------------------------------------------------------------------

    def _metrics(self, name: str) -> Metrics | None:
        return self.groups[name].metrics if name in self.groups else self.metrics

    async def _read_metrics(self, name: str) -> None:
        metrics = self._metrics(name)
        if metrics is None:
            return
        try:
            self._runtime[name].window = await metrics.snapshot(name)
            self._warnings.gone(f"{name}: metrics")
        except DriverError as exc:
            self._warnings.say(f"{name}: metrics", str(exc))

    async def _observe(self, rollout: Rollout, state: ServiceState) -> str | None:
        """Feed the rollout's analysis; a reason to roll back, or None."""
        svc = self.spec.services[rollout.service]
        runtime = self._runtime[rollout.service]
        now = self.clock()
        watch = runtime.watch
        if watch is None or watch.rollout_id != rollout.id:
            if rollout.previous is None:
                return None  # nothing to compare with
            evidence = self.store.observations(rollout.id)
            metrics = self._metrics(rollout.service)
            continues = False
            if metrics is not None:
                try:
                    if (
                        evidence
                        and evidence[-1].window is not None
                        and isinstance(metrics, ResumesWindows)
                    ):
                        # Take up the window the controller before this one counted in,
                        # with what was served while none ran.
                        continues = await metrics.resume(rollout.service)
                    else:
                        await metrics.reset(rollout.service)
                except DriverError as exc:
                    log.warning("%s: metrics reset: %s", rollout.service, exc)
                    return None
            runtime.window = {}
            if evidence:
                # A restarted controller: the judge replays what was recorded and goes on.
                watch = runtime.watch = Watch.resume(
                    svc.analysis,
                    rollout.id,
                    evidence,
                    self.store.checkpoint(rollout.id),
                    window_continues=continues,
                )
                watch.recorded = watch.verdict.outcome if watch.verdict else None
            else:
                watch = runtime.watch = Watch.begin(svc.analysis, rollout.id, now)
                watch.last = watch.persisted = watch.last._replace(at=now, window=EMPTY_WINDOW)
                self.store.add_observation(rollout.id, watch.last)
                self.store.record(
                    rollout.service, "analysis.started", {"judge": watch.judge}, rollout.id
                )
        analyzing = svc.analysis.background or isinstance(rollout.current, Analyze)
        if analyzing:
            window = runtime.window
            share = _canary_share(runtime.applied_weights, rollout.release, rollout.previous)
            if share not in (0.0, 1.0):
                watch.judge_together()
            elif watch.on_its_own != share:
                # The baseline's recent rate is asked once per such stretch (it may be a
                # remote query).
                recent, recent_ms = await self._history(
                    rollout.service, rollout.previous, latencies=share == 1.0
                ) or (None, ())
                watch.judge_on_its_own(share, recent, recent_ms)
            watch.observe(
                svc.analysis,
                now,
                window.get(rollout.release),
                window.get(rollout.previous or ""),
                share,
            )
            row = watch.to_persist()
            if row is not None:
                self.store.add_observation(rollout.id, row)
                checkpoint = watch.checkpoint(row)
                if checkpoint is not None:
                    self.store.save_checkpoint(rollout.id, checkpoint)
        verdict = watch.verdict
        if verdict is not None and verdict.outcome != watch.recorded:
            watch.recorded = verdict.outcome
            self.store.record(
                rollout.service,
                "analysis.verdict",
                {
                    "verdict": verdict.outcome,
                    "reason": verdict.reason,
                    "figures": dict(verdict.figures),
                },
                rollout.id,
            )
        reason = watch.rollback_reason(svc.analysis)
        if reason is None and svc.analysis.alarms:
            reason = await self._alarm_reason(rollout.service, svc.analysis.alarms)
        return reason

    async def _history(
        self,
        service: str,
        release: str | None,
        *,
        latencies: bool,
        seconds: float = REFERENCE_SECONDS,
    ) -> tuple[tuple[int, int] | None, tuple[float, ...]] | None:
        """A release's counts over the metrics provider's last `seconds` and, if asked, its
        latencies of them (None counts: the provider saw none of it); None when the
        provider keeps no history, or cannot say."""
        metrics = self._metrics(service)
        if release is None or not isinstance(metrics, KeepsHistory):
            return None
        try:
            counts = await metrics.recent(service, release, seconds)
            recent_ms = (
                await metrics.recent_latencies(service, release, seconds) if latencies else ()
            )
        except DriverError as exc:
            log.warning("%s: metrics history: %s", service, exc)
            return None
        return counts, recent_ms

    def _watch_aftermath(
        self, rollout: Rollout, outcome: str | None, f: Mapping[str, Any], since: float
    ) -> None:
        """After a canary alone is rolled back (at `since`) for failing or for slowness
        (nothing beside it to tell a shared fault from its own; `outcome` and `f`: the
        last verdict and its figures), watch whether the old release does the same once
        it serves again."""
        runtime = self._runtime[rollout.service]
        if outcome != "fail" or rollout.previous is None or f.get("judged_on_its_own") != "alone":
            return

        def reached(evidence: str) -> bool:
            return float(f.get(evidence, 0)) >= float(f.get(f"{evidence}_to_fail", math.inf))

        start = (rollout.id, rollout.previous, since)
        left = AFTERMATH_SECONDS - max(0.0, self.clock() - since)  # all of it but on a restart
        if reached("error_evidence") and f.get("on_its_own_requests"):
            rate = float(f["on_its_own_failures"]) / float(f["on_its_own_requests"])
            before = float(f.get("reference_rate_bound", 0.0))
            runtime.aftermath = _Aftermath(*start, "errors", rate, before, left)
        elif reached("latency_evidence") and "latency_reference_p50_ms" in f:
            canary = float(f.get("canary_p50_ms", 0.0))
            before = float(f["latency_reference_p50_ms"])
            runtime.aftermath = _Aftermath(*start, "latency", canary, before, left)

    def _resume_ended(self, service: str) -> None:
        """The last ended rollout's analysis, for `status`; and if it was rolled back less
        than AFTERMATH_SECONDS ago with no aftermath recorded, the watch of its old
        release (over what is left of those seconds)."""
        last = next(iter(self.store.rollouts(service, limit=1)), None)
        if last is None or last.ended_at is None:
            return
        events = self.store.events(service, last.id)
        ended = [e.detail for e in events if e.kind == f"rollout.{last.phase}"]
        analysis = ended[-1].get("analysis") if ended else None
        if not isinstance(analysis, dict):
            return
        self._runtime[service].last_analysis = analysis
        if (
            last.phase == "rolled_back"
            and self.clock() - last.ended_at < AFTERMATH_SECONDS
            and not any(e.kind == "rollback.aftermath" for e in events)
        ):
            figures = analysis.get("figures") or {}
            self._watch_aftermath(last, analysis.get("verdict"), figures, last.ended_at)

    async def _read_aftermath(self, service: str) -> None:
        """Once AFTERMATH_SECONDS have passed, record how the old release did."""
        runtime = self._runtime[service]
        after = runtime.aftermath
        if after is None or self.clock() - after.since < AFTERMATH_SECONDS:
            return
        runtime.aftermath = None
        history = await self._history(
            service, after.release, latencies=after.on == "latency", seconds=after.seconds
        )
        if history is None:
            return
        counts, latencies = history
        detail = _aftermath_detail(after, *(counts or (0, 0)), latencies)
        self.store.record(service, "rollback.aftermath", detail, after.rollout_id)

    async def _alarm_reason(self, service: str, names: Sequence[str]) -> str | None:
        """A reason when any of the named alarms is in ALARM (needs an alarm source)."""
        metrics = self._metrics(service)
        if not isinstance(metrics, AlarmSource):
            return None
        try:
            firing = await metrics.alarms_firing(list(names))
            self._warnings.gone(f"{service}: alarms")
        except CanaristError as exc:  # an unknown alarm name too: logged, never a crash
            self._warnings.say(f"{service}: alarms", str(exc))
            return None
        return f"alarm in ALARM: {', '.join(firing)}" if firing else None

    async def _advance(self, rollout: Rollout) -> None:
        """Move the rollout on when its current step is complete."""
        state = self.store.service(rollout.service)
        before = copy.deepcopy(state)
        self._enter_step(state, rollout)  # idempotent: re-asserts the step's desired state
        if state != before:  # written only when it differs: this runs every tick
            self.store.save_service(state)
        reason = await self._observe(rollout, state)
        if reason is not None:
            watch = self._runtime[rollout.service].watch
            if watch is not None and watch.verdict is not None:
                verdict = watch.verdict
                self._watch_aftermath(rollout, verdict.outcome, verdict.figures, self.clock())
            self._end(rollout, "rolled_back", reason)
            return
        step = rollout.current
        now = self.clock()
        done = False
        if isinstance(step, Scale):
            release = self._role_release(rollout, step.role)
            failures = self._runtime[rollout.service].start_failures.get(release or "", 0)
            if release is not None and step.role == "canary" and failures >= START_ATTEMPTS:
                why = self._runtime[rollout.service].last_start_error.get(release, "")
                self._end(
                    rollout,
                    "rolled_back",
                    f"canary instances failed to start {failures} times: {why}",
                )
                return
            done = release is None or self._scaled(rollout.service, release, step.count)
        elif isinstance(step, SetWeight):
            done = self._runtime[rollout.service].applied_weights == state.weights
        elif isinstance(step, Pause):
            done = step.seconds is not None and now - rollout.step_started_at >= step.seconds
        elif isinstance(step, Analyze):
            over = self._analyzed(rollout, step, now)
            if over is None:
                return  # rolled back or paused
            done = over
        elif isinstance(step, Promote):
            self._end(rollout, "promoted", "all steps passed")
            return
        if done:
            after = transition(rollout, StepDone(now))
            with self.store.transaction():
                self._enter_step(state, after)
                self.store.save_service(state)
                self.store.save_rollout(after)
                self.store.record(
                    rollout.service,
                    "rollout.step",
                    {"index": after.step, "step": _step_text(after)},
                    rollout.id,
                )

    def _analyzed(self, rollout: Rollout, step: Analyze, now: float) -> bool | None:
        """Whether an analyze step is over: a pass ends it early; at its time limit, a
        judge still weighing the evidence lets it go on, too little data follows the spec."""
        svc = self.spec.services[rollout.service]
        watch = self._runtime[rollout.service].watch
        verdict = watch.verdict if watch is not None else None
        if verdict is not None and verdict.outcome == "pass":
            return True
        if now - rollout.step_started_at < step.seconds:
            return False
        if watch is None or watch.analysis is None or rollout.previous is None:
            return True  # nothing to judge with: the step is a timed pause
        if verdict is not None and verdict.outcome == "continue":
            return True
        policy = svc.analysis.no_data
        if policy == "fail":
            self._end(rollout, "rolled_back", f"not enough data to judge in {step.seconds:g}s")
            return None
        if policy == "pause" and rollout.phase != "paused":
            self.store.save_rollout(replace(rollout, phase="paused"))
            self.store.record(
                rollout.service,
                "rollout.paused",
                {"reason": "not enough data to judge"},
                rollout.id,
            )
            return None
        return False  # "wait": keep judging until there is enough traffic

    def _enter_step(self, state: ServiceState, rollout: Rollout) -> None:
        """Write the desired state the rollout's current step asks for (idempotent)."""
        step = rollout.current
        if isinstance(step, Scale):
            release = self._role_release(rollout, step.role)
            if release is not None:
                state.counts[release] = step.count
        elif isinstance(step, SetWeight):
            state.weights = _weights(rollout.release, rollout.previous, step.percent)

    def _end(self, rollout: Rollout, phase: Phase, reason: str) -> Rollout:
        """End a rollout and set the service's desired state to match."""
        now = self.clock()
        svc = self.spec.service(rollout.service)
        state = self.store.service(rollout.service)
        ended = transition(rollout, Ended(now, phase, reason))
        with self.store.transaction():
            if phase == "promoted":
                old = rollout.previous
                state.previous = old if old != rollout.release else state.previous
                state.stable = rollout.release
                state.weights = {rollout.release: 100}
                state.counts[rollout.release] = svc.instances
                step = rollout.plan[-1]
                delay = step.scale_down_delay if isinstance(step, Promote) else 0.0
                if old is not None and old != rollout.release:
                    if delay > 0:
                        state.retire_at[old] = now + delay
                    else:
                        state.counts[old] = 0
            else:
                stable = rollout.previous
                state.weights = {stable: 100} if stable else {}
                if stable is not None:
                    state.counts[stable] = svc.instances
                if rollout.release != stable:
                    state.counts[rollout.release] = 0
            state.canary = None
            self.store.save_service(state)
            self.store.save_rollout(ended)
            runtime = self._runtime[rollout.service]
            watch = (
                runtime.watch if runtime.watch and runtime.watch.rollout_id == rollout.id else None
            )
            analysis = watch.summary(now) if watch is not None else None
            runtime.watch = None
            runtime.last_analysis = analysis
            self.store.record(
                rollout.service,
                f"rollout.{phase}",
                {"reason": reason, "analysis": analysis},
                rollout.id,
            )
        log.info("%s: rollout %d %s (%s)", rollout.service, rollout.id, phase, reason)
        return ended

    def _role_release(self, rollout: Rollout, role: str) -> str | None:
        return rollout.release if role == "canary" else rollout.previous

    def _scaled(self, service: str, release: str, count: int) -> bool:
        if service in self.groups:
            return self._runtime[service].healthy.get(release, -1) == count
        records = [r for r in self.store.instances(service) if r.release == release]
        running = [r for r in records if r.state == "running"]
        others = [r for r in records if r.state != "running"]
        return len(running) == count and not others

    # -- reconciliation ----------------------------------------------------------------

    async def _adopt(self) -> None:
        """After a (re)start: keep the instances still running, write off the others; take
        up what the last rollout of each service left to show or to watch."""
        for name in self.spec.services:
            self._resume_ended(name)
        for record in self.store.instances():
            if record.state == "starting" or record.pid == 0:
                # Its process may exist without our knowing its PID: the platform finds it.
                try:
                    await self.platform.discard(record.id)
                except DriverError as exc:
                    log.warning("discard %s: %s", record.id, exc)
                self._mark(record, "failed", "controller restarted while it was starting")
                continue
            if not self.platform.alive(_instance(record)):
                self._mark(record, "failed", "gone while the controller was down")

    async def _reconcile(self, name: str) -> None:
        svc = self.spec.services[name]
        state = self.store.service(name)
        now = self.clock()
        self._retire_warm(state, now)
        read = self.store.changes
        records = self.store.instances(name)

        def fresh() -> list[InstanceRecord]:
            """The records again, if anything was written since they were read."""
            nonlocal read, records
            if self.store.changes != read:
                read, records = self.store.changes, self.store.instances(name)
            return records

        await self._check_health(svc, state, records, now)
        self._scale(svc, state, fresh(), now)
        await self._finish_drains(svc, fresh(), now)
        records = fresh()
        if not await self._apply_table(name, self.router, _table(svc, state, records), state):
            return
        for record in records:
            if record.state == "stopping" and record.id not in self._tasks:
                self._spawn(record.id, self._stop_record(record, svc.stop_grace))

    async def _apply_table(
        self, name: str, router: Router, table: RouteTable, state: ServiceState
    ) -> bool:
        """Apply the table; remember which weights are in force (a SetWeight step waits on
        them). False when the router failed: the next tick tries again."""
        runtime = self._runtime[name]
        try:
            await router.apply(name, table)
        except DriverError as exc:
            runtime.applied_weights = None
            self._warnings.say(f"{name}: router apply", str(exc))
            return False
        self._warnings.gone(f"{name}: router apply")
        runtime.applied_weights = dict(state.weights)
        return True

    async def _reconcile_group(self, name: str) -> None:
        """Converge a group-run service: size each release's group, route, retire the idle."""
        svc = self.spec.services[name]
        drivers = self.groups[name]
        runtime = self._runtime[name]
        state = self.store.service(name)
        self._retire_warm(state, self.clock())
        try:
            if name not in self._ensured:
                await drivers.router.ensure([self._route(svc)])
                self._ensured.add(name)
            for release, want in sorted(state.counts.items()):
                if want > 0 and release not in runtime.targets:
                    target = await drivers.platform.prepare(release)
                    runtime.targets[release] = target
                    if isinstance(drivers.metrics, BindsTargets):
                        drivers.metrics.bind(name, release, target)
                if release in runtime.targets:
                    await drivers.platform.scale(release, want)
                    runtime.healthy[release] = await drivers.platform.healthy_count(release)
        except DriverError as exc:
            self._warnings.say(f"{name}: platform", str(exc))
            runtime.last_start_error[state.canary or ""] = str(exc)
            return
        self._warnings.gone(f"{name}: platform")
        targets = {r: t for r, t in runtime.targets.items() if r in state.weights}
        table = RouteTable(
            members=(), weights=dict(state.weights), canary=state.canary, targets=targets
        )
        if not await self._apply_table(name, drivers.router, table, state):
            return
        # Only once traffic has left them: a group still routed to cannot be removed.
        for release, want in list(state.counts.items()):
            if (
                want == 0
                and state.weights.get(release, 0) == 0
                and release not in (state.stable, state.canary)
            ):
                try:
                    await drivers.platform.retire(release)
                except DriverError as exc:
                    log.warning("%s: retire %s: %s", name, release, exc)
                    continue
                state.counts.pop(release, None)
                runtime.targets.pop(release, None)
                runtime.healthy.pop(release, None)
                if isinstance(drivers.metrics, BindsTargets):
                    drivers.metrics.unbind(name, release)
                self.store.save_service(state)
                self.store.record(name, "release.retired", {"release": release})

    def _retire_warm(self, state: ServiceState, now: float) -> None:
        due = [r for r, at in state.retire_at.items() if at <= now]
        if not due:
            return
        for release in due:
            del state.retire_at[release]
            if release not in (state.stable, state.canary):
                state.counts[release] = 0
        self.store.save_service(state)
        self.store.record(state.name, "release.retired", {"releases": due})

    def _lost(self, state: ServiceState, record: InstanceRecord) -> None:
        watch = self._runtime[state.name].watch
        if watch is not None and record.release == state.canary:
            watch.lost_instances += 1

    async def _check_health(
        self, svc: ServiceSpec, state: ServiceState, records: list[InstanceRecord], now: float
    ) -> None:
        probes: list[tuple[InstanceRecord, asyncio.Task[bool]]] = []
        for record in records:
            if record.state not in ("running", "draining"):
                continue
            instance = _instance(record)
            if not self.platform.alive(instance):
                self._mark(record, "failed", "process exited")
                self._lost(state, record)
                self._runtime[svc.name].applied_weights = None
                self._spawn(record.id, self._stop_record(record, 0.0))
                continue
            health = self._health.setdefault(record.id, _Health())
            if record.state == "running" and now - health.last_probe >= svc.health.interval:
                health.last_probe = now
                path = svc.health.path or self._health_path(record.release)
                probe = self.platform.healthy(
                    instance, health_path=path, timeout=svc.health.timeout
                )
                probes.append((record, asyncio.ensure_future(probe)))
        for record, task in probes:
            health = self._health[record.id]
            ok = await task
            health.failures = 0 if ok else health.failures + 1
            if health.failures >= svc.health.failures:
                # Never repaired in place: it is taken out and a fresh one replaces it.
                self._mark(record, "stopping", f"failed {health.failures} health checks")
                self._lost(state, record)

    def _scale(
        self, svc: ServiceSpec, state: ServiceState, records: list[InstanceRecord], now: float
    ) -> None:
        releases = set(state.counts) | {r.release for r in records}
        for release in sorted(releases):
            want = state.counts.get(release, 0)
            mine = [r for r in records if r.release == release]
            serving = [r for r in mine if r.state in ("starting", "running")]
            if len(serving) < want:
                failures = self._runtime[svc.name].start_failures.get(release, 0)
                if failures >= START_ATTEMPTS and release == state.canary:
                    continue  # the rollout will end; do not hammer a release that cannot start
                for _ in range(want - len(serving)):
                    self._start(svc, release, now)
            elif len(serving) > want:
                # Take out the newest first, so the ones that proved themselves stay longest.
                victims = sorted(serving, key=lambda r: (r.state != "starting", -r.started_at))
                for record in victims[: len(serving) - want]:
                    if record.state == "starting":
                        continue  # let it finish; it is taken out once running
                    record.drain_started_at = now
                    self._mark(record, "draining", "scaled down")
            if want == 0 and not mine:
                state.counts.pop(release, None)
                self.store.save_service(state)

    def _start(self, svc: ServiceSpec, release: str, now: float) -> None:
        instance_id = f"{svc.name}-{release.removeprefix('sha256:')[:8]}-{secrets.token_hex(3)}"
        record = InstanceRecord(
            id=instance_id, service=svc.name, release=release, state="starting", started_at=now
        )
        self.store.save_instance(record)  # recorded before it exists
        self._spawn(instance_id, self._run_start(svc, record))

    async def _run_start(self, svc: ServiceSpec, record: InstanceRecord) -> None:
        path = svc.health.path or self._health_path(record.release)
        try:
            await self.platform.prepare(record.release)
            instance = await self.platform.start(
                svc.name,
                record.release,
                record.id,
                health_path=path,
                timeout=svc.health.start_timeout,
            )
        except Exception as exc:  # every failure of a start is written down, never lost
            runtime = self._runtime[svc.name]
            runtime.start_failures[record.release] = (
                runtime.start_failures.get(record.release, 0) + 1
            )
            runtime.last_start_error[record.release] = (
                str(exc).splitlines()[0] if str(exc) else repr(exc)
            )
            self._mark(record, "failed", f"start failed: {exc}")
            log.warning("%s: %s did not start: %s", svc.name, record.id, exc)
            return
        async with self._lock:
            current = {r.id: r for r in self.store.instances(svc.name)}.get(record.id)
            record.host, record.port, record.pid = instance.host, instance.port, instance.pid
            record.pid_start, record.workdir = instance.pid_start, str(instance.workdir)
            record.started_at = instance.started_at
            if current is None:
                # Written off meanwhile (shutdown): do not leave it running.
                self._mark(record, "stopping", "no longer wanted")
            else:
                self._mark(record, "running", "healthy")
            self.store.record(
                svc.name,
                "instance.started",
                {"instance": record.id, "release": record.release, "port": record.port},
            )

    async def _finish_drains(
        self, svc: ServiceSpec, records: list[InstanceRecord], now: float
    ) -> None:
        for record in records:
            if record.state != "draining":
                continue
            elapsed = now - record.drain_started_at
            if elapsed < 0.3:
                continue  # let the router take it out of rotation first
            try:
                sessions = await self.router.active_sessions(svc.name, record.id)
            except DriverError:
                sessions = 1
            if sessions == 0 or elapsed >= svc.drain_timeout:
                self._mark(record, "stopping", "drained" if sessions == 0 else "drain timeout")

    async def _stop_record(self, record: InstanceRecord, grace: float) -> None:
        if record.pid:
            try:
                await self.platform.stop(_instance(record), grace=grace)
            except DriverError as exc:
                log.warning("stop %s: %s", record.id, exc)
        if record.state != "failed":
            self._mark(record, "stopped", record.reason or "stopped")
        self._health.pop(record.id, None)

    def _spawn(self, key: str, coro: Any) -> None:
        if key in self._tasks and not self._tasks[key].done():
            return
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    def _mark(self, record: InstanceRecord, state: Any, reason: str) -> None:
        record.state = state
        record.reason = reason
        self.store.save_instance(record)

    def _health_path(self, release: str) -> str:
        # Asked every tick (routes, probes); a release never changes, so read it once.
        path = self._health_paths.get(release)
        if path is None:
            try:
                path = self._health_paths[release] = self.catalog.health(release)
            except Exception:  # a release gone from the catalog still gets probed somewhere sane
                return "/healthz"
        return path

    def _routes(self) -> list[ServiceRoute]:
        # Built again only for another spec, or after a write (a health path comes from the
        # service's releases in the store).
        spec, changes, routes = self._last_routes
        if spec is not self.spec or changes != self.store.changes:
            changes = self.store.changes
            routes = [
                self._route(s) for s in self.spec.services.values() if s.name not in self.groups
            ]
            self._last_routes = (self.spec, changes, routes)
        return routes

    def _route(self, svc: ServiceSpec) -> ServiceRoute:
        host, port = svc.listen_address()
        return ServiceRoute(
            name=svc.name,
            listen_host=host,
            listen_port=port,
            slots=svc.slot_count(),
            health_path=svc.health.path or self._route_health(svc.name),
            sticky=svc.sticky,
            canary_header=svc.canary_header,
        )

    def _route_health(self, name: str) -> str:
        state = self.store.service(name)
        release = state.stable or state.canary
        return self._health_path(release) if release else "/healthz"

    # -- reading -----------------------------------------------------------------------

    def status(self, service: str | None = None) -> list[dict[str, Any]]:
        """Where each service stands, in the `status --json` shape."""
        names = [self.spec.service(service).name] if service else list(self.spec.services)
        return [self._status(name) for name in names]

    def _status(self, name: str) -> dict[str, Any]:
        svc = self.spec.services[name]
        state = self.store.service(name)
        rollout = self.store.active_rollout(name)
        records = self.store.instances(name)
        host, port = svc.listen_address()
        running = [r for r in records if r.state == "running"]
        phase: str
        if rollout is not None:
            phase = rollout.phase
        elif state.stable is None:
            phase = "empty"
        elif self._serving(name, state.stable, running) < svc.instances:
            phase = "degraded"
        else:
            phase = "stable"
        runtime = self._runtime[name]
        window = runtime.window
        if runtime.watch is not None:
            analysis = runtime.watch.summary(self.clock())
        elif runtime.last_analysis is not None:
            analysis = {**runtime.last_analysis, "finished": True}
        else:
            analysis = {
                "judge": svc.analysis.judge,
                "verdict": None,
                "reason": "no rollout has been analyzed yet",
                "figures": {},
            }
        return {
            "service": name,
            "phase": phase,
            "stable": state.stable,
            "canary": state.canary,
            "previous": state.previous,
            "weights": dict(state.weights),
            "step": _step_info(rollout, self.clock()) if rollout else None,
            "rollout": _rollout_json(rollout) if rollout else None,
            "analysis": analysis,
            # A service on AWS is reached through AWS (its record, load balancer, alias).
            "endpoint": None if name in self.groups else f"http://{host}:{port}/",
            "instances": [
                {"id": r.id, "release": r.release, "state": r.state, "port": r.port, "pid": r.pid}
                for r in records
            ],
            # Since the current (or last) analysis window began.
            "counters": {
                release: {
                    "requests": w.requests,
                    "failures": w.failures,
                    # of which sent with the canary header (clients' choice, not the split)
                    "requested": w.requested,
                    "requested_failures": w.requested_failures,
                    # of which kept on the release by a sticky service's cookie
                    "pinned": w.pinned,
                    "pinned_failures": w.pinned_failures,
                }
                for release, w in window.items()
            },
            "warm": {release: at for release, at in state.retire_at.items()},
        }

    def _serving(self, name: str, release: str, running: list[InstanceRecord]) -> int:
        if name in self.groups:
            return self._runtime[name].healthy.get(release, 0)
        return sum(1 for r in running if r.release == release)

    def history(self, service: str, limit: int = 50) -> list[dict[str, Any]]:
        """Past and current rollouts of a service, newest first."""
        self.spec.service(service)
        return [self._with_events(r) for r in self.store.rollouts(service, limit)]

    def rollout(self, rollout_id: int) -> dict[str, Any] | None:
        """One rollout by id with its events, as `history` gives it, for `deploy --wait`."""
        rollout = self.store.rollout(rollout_id)
        return None if rollout is None else self._with_events(rollout)

    def _with_events(self, rollout: Rollout) -> dict[str, Any]:
        item = _rollout_json(rollout)
        item["events"] = [
            {"at": e.at, "kind": e.kind, "detail": e.detail}
            for e in self.store.events(rollout.service, rollout.id)
        ]
        return item


def _aftermath_detail(
    after: _Aftermath, requests: int, failures: int, latencies: Sequence[float] = ()
) -> dict[str, Any]:
    """What the old release did in the seconds after a canary alone was rolled back,
    weighed between two stories: it now does what the canary did (the fault likely lies
    outside the release, in a dependency both use: `shared` True), or what it did before
    (the fault was the release's: False). For errors, the likelihood ratio of its
    failures under the canary's rate against its own rate before (the bound the canary
    was judged against); for latency, a sign test of its latencies (at least
    AFTERMATH_LATENCIES) about the midpoint between its median before and the canary's.
    A ratio of AFTERMATH_EVIDENCE either way, or a sign test at 1 / AFTERMATH_EVIDENCE,
    settles it; anything less is too few to tell (`shared` None)."""
    back = f"after the switch back, the old release {{}} in {after.seconds:.3g}s"
    rate = failures / requests if requests else 0.0
    detail: dict[str, Any] = {
        "release": after.release,
        "seconds": after.seconds,
        "on": after.on,
        "requests": requests,
        "failures": failures,
        "error_rate": rate,
    }
    shared: bool | None = None
    if after.on == "errors":
        canary = f"{100 * after.canary:.2f}%"
        seen = back.format(f"failed {failures} of {requests} requests ({100 * rate:.2f}%)")
        log_ratio = _log_rate_ratio(requests, failures, after.canary, after.before)
        if log_ratio >= math.log(AFTERMATH_EVIDENCE):
            shared = True
        elif log_ratio <= -math.log(AFTERMATH_EVIDENCE):
            shared = False
        detail.update(
            canary_error_rate=after.canary,
            before_rate_bound=after.before,
            likelihood_ratio=math.exp(max(-700.0, min(log_ratio, 700.0))),
        )
        alike, unlike = "about as often as", "far less often than"
    else:
        median = statistics.median(latencies) if latencies else None
        canary = f"{after.canary:.0f} ms, {after.before:.0f} ms before"
        seen = back.format(
            f"answered in {median:.0f} ms (median of {len(latencies)})"
            if median is not None
            else "logged no latency"
        )
        midpoint = (after.before + after.canary) / 2
        above = sum(ms > midpoint for ms in latencies)
        below = sum(ms < midpoint for ms in latencies)
        if above + below >= AFTERMATH_LATENCIES:
            if _sign_test(above, below) <= 1 / AFTERMATH_EVIDENCE:
                shared = True
            elif _sign_test(below, above) <= 1 / AFTERMATH_EVIDENCE:
                shared = False
        detail.update(
            p50_ms=median,
            canary_p50_ms=after.canary,
            before_p50_ms=after.before,
            above_midpoint=above,
            below_midpoint=below,
        )
        alike, unlike = "about as slowly as", "far faster than"
    if not requests:
        summary = back.format("served no request")
    elif shared is None:
        summary = f"{seen}: too few to tell whose fault it was"
    elif shared:
        summary = (
            f"{seen}, {alike} the new one ({canary}): the fault likely lies outside the"
            " release (a dependency both use?)"
        )
    else:
        summary = f"{seen}, {unlike} the new one ({canary}): the fault was the new release's"
    detail.update(shared=shared, summary=summary)
    return detail


def _log_rate_ratio(requests: int, failures: int, canary: float, before: float) -> float:
    """log of P(failures | canary's rate) / P(failures | the rate before); 0 when the two
    rates do not differ as a rollback for errors implies."""
    if not 0 < before < canary:
        return 0.0
    successes = requests - failures
    if canary >= 1:
        return -math.inf if successes else failures * math.log(1 / before)
    return failures * math.log(canary / before) + successes * math.log((1 - canary) / (1 - before))


def _sign_test(more: int, fewer: int) -> float:
    """One-sided sign test: P(at least `more` of more + fewer fair coin flips come up);
    exact up to 200 flips, by the normal approximation (continuity-corrected) beyond."""
    n = more + fewer
    if n > 200:
        z = (more - 0.5 - n / 2) / math.sqrt(n / 4)
        return 1 - statistics.NormalDist().cdf(z)
    return float(sum(math.comb(n, k) for k in range(more, n + 1))) / float(2**n)


def _weights(canary: str, stable: str | None, percent: int) -> dict[str, int]:
    if stable is None or stable == canary:
        return {canary: 100}
    return {canary: percent, stable: 100 - percent}


def _table(svc: ServiceSpec, state: ServiceState, records: list[InstanceRecord]) -> RouteTable:
    """What the router should route: serving releases and the canary, plus draining members."""
    members = []
    for record in records:
        routed = state.weights.get(record.release, 0) > 0 or record.release == state.canary
        if record.state == "running" and routed:
            members.append(Member(record.id, record.release, record.host, record.port, "active"))
        elif record.state == "draining" and record.port:
            members.append(Member(record.id, record.release, record.host, record.port, "draining"))
    canary = state.canary if svc.canary_header else None
    return RouteTable(members=tuple(members), weights=dict(state.weights), canary=canary)


def _instance(record: InstanceRecord) -> Instance:
    return Instance(
        id=record.id,
        service=record.service,
        release=record.release,
        host=record.host,
        port=record.port,
        pid=record.pid,
        pid_start=record.pid_start,
        workdir=Path(record.workdir),
        started_at=record.started_at,
    )


def _short(ref: str) -> str:
    return ref[:19]


def _step_text(rollout: Rollout) -> str:
    step = rollout.current
    return describe(step) if step is not None else "done"


class _Warnings:
    """What failed at every tick, logged when it begins and when it ends, not at each of
    the ten ticks a second it goes on."""

    def __init__(self) -> None:
        self._standing: dict[str, str] = {}  # what failed -> why, as last logged

    def say(self, what: str, why: str) -> None:
        if self._standing.get(what) != why:
            self._standing[what] = why
            log.warning("%s: %s", what, why)

    def gone(self, what: str) -> None:
        if self._standing.pop(what, None) is not None:
            log.info("%s: works again", what)


def _step_info(rollout: Rollout, now: float) -> dict[str, Any]:
    step = rollout.current
    remaining = None
    description = _step_text(rollout)
    if isinstance(step, Pause | Analyze) and step.seconds is not None:
        remaining = max(0.0, step.seconds - (now - rollout.step_started_at))
        if isinstance(step, Analyze) and remaining == 0.0 and rollout.phase != "paused":
            # Only a judge with too little data (no_data: wait) or still weighing the
            # evidence keeps an analyze step past its time limit.
            description += ", past it: waiting for the judge's verdict"
    return {
        "index": rollout.step,
        "total": len(rollout.plan),
        "kind": step.kind if step is not None else "done",
        "description": description,
        "remaining": remaining,
    }


def _rollout_json(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "service": rollout.service,
        "release": rollout.release,
        "previous": rollout.previous,
        "strategy": rollout.strategy,
        "phase": rollout.phase,
        "step": rollout.step,
        "steps": [describe(s) for s in rollout.plan],
        "created_at": rollout.created_at,
        "ended_at": rollout.ended_at,
        "reason": rollout.reason,
        "exit_code": EXIT_CODES.get(rollout.phase),
    }


def _canary_share(
    weights: dict[str, int] | None, canary: str, baseline: str | None
) -> float | None:
    """The canary's share of the two releases' traffic by the weights the router has
    (None when they are not known: not applied yet, or the last apply failed)."""
    if weights is None or baseline is None:
        return None
    both = weights.get(canary, 0) + weights.get(baseline, 0)
    return weights.get(canary, 0) / both if both else None
