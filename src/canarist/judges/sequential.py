"""The `sequential` judge (the default): anytime-valid tests that stop as soon as they can.

Two tests watch the canary side by side with the baseline, and each may be looked at
after every observation (four times a second) without inflating its error rates.

Error rate: a stratified, conditional likelihood-ratio test
    Each observation interval is a stratum: n_c canary and n_b baseline requests, and f
    failures between them. Given f, the number x of those failures that the canary
    served follows Fisher's noncentral hypergeometric law with odds ratio psi (the
    canary's odds of failing over the baseline's), whatever the common failure rate is
    in that interval. Conditioning removes the unknown, drifting baseline rate and the
    canary's traffic share, which may change between steps: a shared outage fails both
    releases alike and is no evidence against the canary. This is Fisher's conditional
    test of a 2x2 table, taken stratum by stratum as in Mantel & Haenszel (1959), and the
    case-or-control conditioning of Kulldorff et al.'s binomial MaxSPRT (2011).

    Roll back when a mixture of likelihood ratios, over a grid of odds ratios above
    psi0 = 1 + error_tolerance, reaches 1/alpha_e. The mixture (Robbins 1970; the mSPRT of
    Johari et al. 2017) is a non-negative supermartingale while psi <= psi0, so by
    Ville's inequality (1939) the probability that it *ever* reaches 1/alpha_e is at most
    alpha_e, however often it is looked at: that is the false-rollback guarantee.
    Against large regressions it behaves like Wald's SPRT (1945) for the right odds
    ratio, at the cost of the log of the grid's size.

    Error rates below `min_error_rate` are never a reason to roll back: a second
    mixture tests "canary error rate <= min_error_rate" on the canary's own binomial
    counts, and a rollback needs both tests to reject (an intersection-union test,
    Berger 1982, which keeps level alpha_e). Without it, a canary with 2 failures in
    100,000 requests would be rolled back for being worse than a baseline with none.

    Pass when the likelihood ratio of psi0 against the stated degradation psi1 =
    `error_degradation` reaches 1/beta (Wald's other boundary, a supermartingale while
    psi >= psi1, so a canary that is that much worse passes with probability <= beta).
    A weighted average of that ratio and an absolute one ("canary error rate below
    psi1 * min_error_rate") is used instead, so that releases that never fail can pass.

Latency: a sequential rank test on contemporaneous pairs
    Each canary latency sample is compared with k fresh baseline samples taken at about
    the same time (each sample is used once, so comparisons are independent). If the
    canary is no slower than the baseline scaled by 1 + latency_tolerance, the number R
    of scaled baseline samples it exceeds is at most uniform on 0..k (exactly uniform
    when the distributions match), whatever the latency distribution is. Against
    Lehmann alternatives (canary CDF = F^a, Lehmann 1953), R follows a beta-binomial
    law; a mixture over a > 1 of those likelihood ratios is again a supermartingale
    under the null, with Ville's bound alpha_l. The pass side compares with the baseline
    scaled by 1 + latency_degradation and mixes over a < 1.

Guarantees and defaults
    alpha = 0.01 is the false-rollback rate of the whole judge: alpha_e = alpha *
    (1 - latency_share) and alpha_l = alpha * latency_share (union bound). beta = 0.1:
    a canary whose failure odds are twice the baseline's (error_degradation = 2), or
    whose latencies are 25 % higher (latency_degradation = 0.25), passes with probability
    at most 0.1 (power 0.9). No pass before `min_requests` canary requests.

Assumptions: within one observation interval, requests of both releases fail
independently with a common probability when the canary is no worse (so requests must
be split between releases at random, not by a client property that also drives
failures); latency samples of the two releases in a pairing window are independent
draws from their distributions. Ties between latencies count against rejecting.

References
    A. Wald (1945), Sequential tests of statistical hypotheses, Ann. Math. Stat. 16(2).
    J. Ville (1939), Etude critique de la notion de collectif, Gauthier-Villars.
    H. Robbins (1970), Statistical methods related to the law of the iterated
        logarithm, Ann. Math. Stat. 41(5).
    R. Johari, P. Koomen, L. Pekelis, D. Walsh (2017), Peeking at A/B tests: why it
        matters, and what to do about it, KDD 2017.
    M. Kulldorff, R. Davis, M. Kolczak, E. Lewis, T. Lieu, R. Platt (2011), A maximized
        sequential probability ratio test for drug and vaccine safety surveillance,
        Sequential Analysis 30(1).
    N. Mantel, W. Haenszel (1959), Statistical aspects of the analysis of data from
        retrospective studies of disease, J. Natl. Cancer Inst. 22(4).
    E. L. Lehmann (1953), The power of rank tests, Ann. Math. Stat. 24(1).
    R. L. Berger (1982), Multiparameter hypothesis testing and acceptance sampling,
        Technometrics 24(4).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from pydantic import Field, model_validator

from canarist.judges.base import (
    CONTINUE,
    FAIL,
    NO_DATA,
    PASS,
    Counts,
    Figure,
    JudgeSettings,
    LatencyWindow,
    Observation,
    Seconds,
    Verdict,
    count_figures,
    latency_figures,
    percent,
)

# Odds ratios (canary over baseline) that the rollback mixture spreads its weight over.
# Coarse on purpose: each point costs log(len) of evidence, and neighbours overlap.
ERROR_GRID = (1.5, 2.5, 5.0, 10.0, 30.0, 200.0)
# Lehmann exponents a (P(canary slower) = a / (a + 1) against one baseline sample).
LATENCY_FAIL_GRID = (1.5, 2.0, 3.0, 6.0, 20.0)
LATENCY_PASS_GRID = (0.8, 0.6, 0.4, 0.2)
# Part of the pass evidence given to the relative (odds-ratio) test; the rest goes to
# the absolute one, which only matters for releases that (almost) never fail.
RELATIVE_PASS_WEIGHT = 0.8
# Seconds of traffic that the canary's share is estimated from.
SHARE_WINDOW = 30.0


class SequentialSettings(JudgeSettings):
    """Settings of the sequential judge (defaults are the product's defaults)."""

    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    """False-rollback rate of the whole judge, valid under continuous monitoring."""
    beta: float = Field(default=0.1, gt=0, lt=0.5)
    """Probability of passing a canary degraded as stated below (1 - power)."""
    latency_share: float = Field(default=0.2, ge=0, lt=1)
    """Part of alpha spent on the latency test; 0 turns the latency test off."""
    error_degradation: float = Field(default=2.0, gt=1)
    """Odds ratio (canary over baseline) that must not pass: 2 = twice as many failures."""
    min_error_rate: float = Field(default=0.001, ge=0, lt=0.5)
    """Canary error rates at or below this are never a reason to roll back."""
    latency_tolerance: float = Field(default=0.1, ge=0)
    """How much slower than the baseline the canary may be without a rollback (0.1 = 10 %)."""
    latency_degradation: float = Field(default=0.25, gt=0)
    """How much slower than the baseline a canary must not pass (0.25 = 25 %)."""
    min_requests: int = Field(default=200, ge=1)
    """Canary requests before a pass is possible; below it the verdict is no_data."""
    baseline_per_canary: int = Field(default=8, ge=1, le=64)
    """Baseline latency samples each canary sample is compared with, at most."""
    pair_window: Seconds = Field(default=10.0, gt=0)
    """Latency samples left unpaired for this long are dropped (pairs stay contemporaneous)."""
    block_window: Seconds = Field(default=5.0, gt=0)
    """How far back a block of requests reaches; the canary's share must hold steady over it."""

    @model_validator(mode="after")
    def _ordered(self) -> SequentialSettings:
        if self.latency_degradation <= self.latency_tolerance:
            raise ValueError("latency_degradation must exceed latency_tolerance")
        return self


class SequentialJudge:
    """Anytime-valid sequential tests on error rate and latency (see the module docstring)."""

    name = "sequential"

    def __init__(self, settings: SequentialSettings | None = None) -> None:
        self.settings = settings or SequentialSettings()

    def begin(self) -> SequentialAnalysis:
        """A fresh analysis."""
        return SequentialAnalysis(self.settings)


class _Mixture:
    """A weighted mixture of likelihood ratios, each kept as a running log."""

    def __init__(self, size: int) -> None:
        self.logs = [0.0] * size
        self._log_weight = -math.log(size)
        self.peak = 1.0  # the largest value seen: its inverse is an always-valid p-value

    def add(self, increments: Sequence[float]) -> None:
        """Multiply each component by exp(increment)."""
        logs = self.logs
        for i, increment in enumerate(increments):
            logs[i] += increment
        self.peak = max(self.peak, self.value())

    def value(self) -> float:
        """The mixture's likelihood ratio (an e-value)."""
        return math.exp(min(_logsumexp(self.logs) + self._log_weight, 700.0))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


class _ErrorTest:
    """The error-rate half of the judge: relative tests against the baseline, absolute floor."""

    def __init__(self, settings: SequentialSettings) -> None:
        self.block_window = settings.block_window
        self.psi1 = settings.error_degradation
        self._log_psi1 = math.log(self.psi1)
        self.fail = _Mixture(len(ERROR_GRID))
        self.pass_log = 0.0  # log likelihood ratio of odds ratio 1 against psi1
        # Requests not yet in a block (no failure among them), newest last: (time, n_c, n_b).
        self._pending: deque[tuple[float, int, int]] = deque()
        # Requests already used, for the canary's traffic share: (time, n_c, n_c + n_b).
        self._history: deque[tuple[float, int, int]] = deque()
        self._history_canary = 0
        self._history_total = 0
        self.share = 0.5
        # Absolute floor: H0 "canary rate <= floor" against a grid of higher rates.
        self.floor = settings.min_error_rate
        self._floor_rates = _floor_grid(self.floor)
        self.floor_fail = _Mixture(len(self._floor_rates)) if self.floor > 0 else None
        self.canary_failures = 0  # with no floor, one canary failure clears it
        degraded = min(self.psi1 * self.floor, 0.5)
        self._degraded_rate = degraded
        self._pass_rates = (degraded / 2, degraded / 8) if self.floor > 0 else ()
        self.floor_pass = _Mixture(len(self._pass_rates)) if self._pass_rates else None

    def update(self, now: float, n_c: int, x_c: int, n_b: int, x_b: int) -> None:
        """Take in one interval ending at `now`: requests and failures of each release."""
        self._rollback_block(now, n_c, x_c, n_b, x_b)
        self._pass_stratum(n_c, x_c, n_b, x_b)
        self._absolute(n_c, x_c)

    def _rollback_block(self, now: float, n_c: int, x_c: int, n_b: int, x_b: int) -> None:
        """Close a block at every interval with failures; score it with the 2x2 e-variable.

        A block is the interval plus the failure-free intervals just before it (at most
        `block_window` seconds back). Its f failed and m succeeded requests are two
        groups; under "the canary fails no more often", the label (canary or baseline)
        of each request is independent of its outcome, so with q1 and q0 fixed before
        the block, E = prod q(label) / q_pool(label) over the block's requests, where
        q_pool = (f q1 + m q0) / (f + m), has expectation at most 1 (Turner, Ly &
        Grunwald 2024). Long blocks make q_pool close to the canary's share, so each
        canary failure counts nearly fully even when a poll sees only a few requests.
        """
        pending = self._pending
        while pending and pending[0][0] <= now - self.block_window:
            self._remember(*pending.popleft())
        failures = x_c + x_b
        if failures == 0:
            if n_c + n_b:
                pending.append((now, n_c, n_b))
            return
        block_c = n_c + sum(entry[1] for entry in pending)
        block_b = n_b + sum(entry[2] for entry in pending)
        w = self.share  # estimated from requests before the block only: predictable
        succeeded = block_c + block_b - failures
        canary_succeeded = block_c - x_c
        if succeeded > 0:
            increments = []
            for psi in ERROR_GRID:
                q1 = w * psi / (w * psi + 1 - w)
                pooled = (failures * q1 + succeeded * w) / (failures + succeeded)
                increments.append(
                    x_c * math.log(q1 / pooled)
                    + x_b * math.log((1 - q1) / (1 - pooled))
                    + canary_succeeded * math.log(w / pooled)
                    + (succeeded - canary_succeeded) * math.log((1 - w) / (1 - pooled))
                )
            self.fail.add(increments)
        while pending:
            self._remember(*pending.popleft())
        self._remember(now, n_c, n_b)

    def _remember(self, when: float, n_c: int, n_b: int) -> None:
        """Add used requests to the share estimate, which looks back SHARE_WINDOW seconds."""
        history = self._history
        history.append((when, n_c, n_c + n_b))
        self._history_canary += n_c
        self._history_total += n_c + n_b
        while history and history[0][0] <= when - SHARE_WINDOW:
            _, old_c, old_total = history.popleft()
            self._history_canary -= old_c
            self._history_total -= old_total
        # Half a request each way keeps the estimate inside (0, 1).
        self.share = (self._history_canary + 0.5) / (self._history_total + 1)

    def _pass_stratum(self, n_c: int, x: int, n_b: int, x_b: int) -> None:
        """Fisher's conditional likelihood ratio of odds ratio 1 against psi1, per interval.

        Given the interval's f failures, the canary's share x follows Fisher's noncentral
        hypergeometric law, exactly, whatever the common rate: this side needs no
        assumption about the traffic share, only that the interval is short.
        """
        f = x + x_b
        low, high = max(0, f - n_b), min(f, n_c)
        if f == 0 or low == high:
            return  # no failure, or where it fell was forced: no evidence either way
        # log of C(n_c, y) C(n_b, f - y) up to a constant, by the ratio of neighbours
        log_h = [0.0]
        for y in range(low, high):
            ratio = (n_c - y) * (f - y) / ((y + 1) * (n_b - f + y + 1))
            log_h.append(log_h[-1] + math.log(ratio))
        g1 = _logsumexp(log_h)
        g_psi1 = _logsumexp([lh + (low + i) * self._log_psi1 for i, lh in enumerate(log_h)])
        self.pass_log += g_psi1 - g1 - x * self._log_psi1

    def _absolute(self, n: int, x: int) -> None:
        if n == 0:
            return
        self.canary_failures += x
        floor = self.floor
        if self.floor_fail is not None:
            self.floor_fail.add(
                [
                    x * math.log(r / floor) + (n - x) * math.log((1 - r) / (1 - floor))
                    for r in self._floor_rates
                ]
            )
        if self.floor_pass is not None:
            d = self._degraded_rate
            self.floor_pass.add(
                [
                    x * math.log(r / d) + (n - x) * math.log((1 - r) / (1 - d))
                    for r in self._pass_rates
                ]
            )

    def fail_evidence(self) -> float:
        """The intersection-union e-value: both the relative and the absolute test must agree."""
        relative = self.fail.value()
        if self.floor_fail is None:
            return relative if self.canary_failures > 0 else 1.0
        return min(relative, self.floor_fail.value())

    def fail_p_value(self) -> float:
        """Always-valid p-value of "the canary is no worse" (the larger of the two tests')."""
        relative = 1.0 / self.fail.peak
        if self.floor_fail is None:
            return relative if self.canary_failures > 0 else 1.0
        return min(1.0, max(relative, 1.0 / self.floor_fail.peak))

    def pass_evidence(self) -> float:
        """Evidence that the canary is not degraded (an e-value against the degradation)."""
        relative = math.exp(min(self.pass_log, 700.0))
        if self.floor_pass is None:
            return relative
        return RELATIVE_PASS_WEIGHT * relative + (1 - RELATIVE_PASS_WEIGHT) * (
            self.floor_pass.value()
        )


def _floor_grid(floor: float) -> tuple[float, ...]:
    if floor <= 0:
        return ()
    candidates = {floor * m for m in (2, 5, 20, 100)} | {0.3, 0.9}
    return tuple(sorted(r for r in candidates if floor < r < 1))


class _LatencyTest:
    """The latency half of the judge: a sequential rank test on contemporaneous pairs."""

    def __init__(self, settings: SequentialSettings) -> None:
        self.k_max = settings.baseline_per_canary
        self.window = settings.pair_window
        self.fail_scale = 1 + settings.latency_tolerance
        self.pass_scale = 1 + settings.latency_degradation
        self.fail = _Mixture(len(LATENCY_FAIL_GRID))
        self.pass_ = _Mixture(len(LATENCY_PASS_GRID))
        self._fail_table = _lehmann_table(self.k_max, LATENCY_FAIL_GRID)
        self._pass_table = _lehmann_table(self.k_max, LATENCY_PASS_GRID)
        self._canary: deque[tuple[float, float]] = deque()
        self._baseline: deque[tuple[float, float]] = deque()
        self.pairs = 0
        self.slower = 0.0  # sum of R/k: the share of comparisons the canary lost

    def update(self, now: float, canary: Sequence[float], baseline: Sequence[float]) -> None:
        """Queue fresh samples, drop stale ones, and compare as many as can be paired."""
        pending_c, pending_b = self._canary, self._baseline
        pending_c.extend((now, v) for v in canary)
        pending_b.extend((now, v) for v in baseline)
        cutoff = now - self.window
        while pending_c and pending_c[0][0] < cutoff:
            pending_c.popleft()
        while pending_b and pending_b[0][0] < cutoff:
            pending_b.popleft()
        fail_logs = [0.0] * len(LATENCY_FAIL_GRID)
        pass_logs = [0.0] * len(LATENCY_PASS_GRID)
        compared = False
        while pending_c and pending_b:
            # How many baseline samples each canary sample gets depends only on counts,
            # never on values, so the comparisons stay independent and exchangeable.
            k = max(1, min(self.k_max, len(pending_b) // len(pending_c)))
            value = pending_c.popleft()[1]
            beaten = passed = 0
            for _ in range(k):
                other = pending_b.popleft()[1]
                if other * self.fail_scale < value:  # a tie never counts towards a rollback
                    beaten += 1
                if other * self.pass_scale <= value:  # nor towards a pass
                    passed += 1
            for i, row in enumerate(self._fail_table[k]):
                fail_logs[i] += row[beaten]
            for i, row in enumerate(self._pass_table[k]):
                pass_logs[i] += row[passed]
            self.pairs += 1
            self.slower += beaten / k
            compared = True
        if compared:
            self.fail.add(fail_logs)
            self.pass_.add(pass_logs)


def _lehmann_table(k_max: int, grid: Sequence[float]) -> list[list[list[float]]]:
    """table[k][j][r] = log of P_a(R = r) / P_1(R = r) for a = grid[j], k comparisons.

    Under the Lehmann alternative G = F^a the canary's probability integral transform
    is Beta(a, 1), so R is beta-binomial: P_a(R = r) = C(k, r) a B(r + a, k - r + 1),
    and P_1(R = r) = 1 / (k + 1).
    """
    table: list[list[list[float]]] = [[]]
    for k in range(1, k_max + 1):
        rows = []
        for a in grid:
            row = []
            for r in range(k + 1):
                log_p = (
                    math.lgamma(k + 1)
                    - math.lgamma(r + 1)
                    - math.lgamma(k - r + 1)
                    + math.log(a)
                    + math.lgamma(r + a)
                    + math.lgamma(k - r + 1)
                    - math.lgamma(k + 1 + a)
                )
                row.append(log_p + math.log(k + 1))
            rows.append(row)
        table.append(rows)
    return table


class SequentialAnalysis:
    """One rollout's sequential analysis."""

    def __init__(self, settings: SequentialSettings) -> None:
        self.settings = settings
        latency_alpha = settings.alpha * settings.latency_share
        self._error_bar = 1.0 / (settings.alpha - latency_alpha)
        self._latency_bar = 1.0 / latency_alpha if latency_alpha > 0 else math.inf
        self._pass_bar = 1.0 / settings.beta
        self._canary = Counts()
        self._baseline = Counts()
        self._errors = _ErrorTest(settings)
        self._latency = _LatencyTest(settings) if latency_alpha > 0 else None
        self._canary_window = LatencyWindow()
        self._baseline_window = LatencyWindow()
        self._final: Verdict | None = None

    def update(self, observation: Observation) -> Verdict:
        """Take in one observation; roll back, pass, or say how far the evidence has come."""
        if self._final is not None:
            return self._final
        n_c, x_c = self._canary.advance(observation.canary)
        n_b, x_b = self._baseline.advance(observation.baseline)
        self._errors.update(observation.elapsed, n_c, x_c, n_b, x_b)
        canary_latencies = observation.canary.latencies_ms
        baseline_latencies = observation.baseline.latencies_ms
        self._canary_window.extend(canary_latencies)
        self._baseline_window.extend(baseline_latencies)
        if self._latency is not None and (canary_latencies or baseline_latencies):
            self._latency.update(observation.elapsed, canary_latencies, baseline_latencies)
        verdict = self._verdict(observation.elapsed)
        if verdict.outcome in (PASS, FAIL):
            self._final = verdict
        return verdict

    def _verdict(self, elapsed: float) -> Verdict:
        s = self.settings
        errors, latency = self._errors, self._latency
        figures = self._figures(elapsed)
        error_evidence = errors.fail_evidence()
        rates = (
            f"canary error rate {percent(self._canary.rate)} over {self._canary.requests} "
            f"requests vs baseline {percent(self._baseline.rate)}"
        )
        if error_evidence >= self._error_bar:
            return Verdict(
                FAIL,
                f"{rates}: evidence {error_evidence:.0f} >= {self._error_bar:.0f} "
                f"that the canary fails more (false-rollback rate {s.alpha:g})",
                figures,
            )
        if latency is not None and latency.fail.value() >= self._latency_bar:
            return Verdict(
                FAIL,
                f"canary slower than baseline ({self._latency_medians()}): evidence "
                f"{latency.fail.value():.0f} >= {self._latency_bar:.0f} over {latency.pairs} "
                f"compared samples (false-rollback rate {s.alpha:g})",
                figures,
            )
        if self._canary.requests < s.min_requests:
            return Verdict(
                NO_DATA,
                f"not enough data: {self._canary.requests} of {s.min_requests} canary "
                f"requests needed before a pass",
                figures,
            )
        error_pass = errors.pass_evidence()
        latency_pass = latency.pass_.value() if latency is not None else math.inf
        if error_pass >= self._pass_bar and latency_pass >= self._pass_bar:
            latency_note = f", {self._latency_medians()}" if latency is not None else ""
            return Verdict(
                PASS,
                f"canary no worse than baseline: {rates}{latency_note}; evidence "
                f">= {self._pass_bar:.0f} against a {s.error_degradation:g}x error odds "
                f"regression" + (" or a latency regression" if latency is not None else ""),
                figures,
            )
        progress = (
            f"errors: rollback evidence {error_evidence:.1f} of {self._error_bar:.0f}, "
            f"pass evidence {error_pass:.1f} of {self._pass_bar:.0f}"
        )
        if latency is not None:
            progress += (
                f"; latency: rollback {latency.fail.value():.1f} of {self._latency_bar:.0f}, "
                f"pass {latency_pass:.1f} of {self._pass_bar:.0f}"
            )
        return Verdict(CONTINUE, f"gathering evidence ({rates}); {progress}", figures)

    def _latency_medians(self) -> str:
        canary = self._canary_window.quantile(0.5)
        baseline = self._baseline_window.quantile(0.5)
        return f"p50 {canary:.0f} ms vs {baseline:.0f} ms"

    def _figures(self, elapsed: float) -> dict[str, Figure]:
        errors, latency = self._errors, self._latency
        figures: dict[str, Figure] = {"judge": "sequential", "elapsed_s": round(elapsed, 2)}
        figures.update(count_figures(self._canary, self._baseline))
        figures.update(
            {
                "error_evidence": _round(errors.fail_evidence()),
                "error_evidence_to_fail": _round(self._error_bar),
                "error_p_value": _round(errors.fail_p_value()),
                "error_pass_evidence": _round(errors.pass_evidence()),
                "pass_evidence_to_pass": _round(self._pass_bar),
            }
        )
        if latency is not None:
            figures.update(
                {
                    "latency_evidence": _round(latency.fail.value()),
                    "latency_evidence_to_fail": _round(self._latency_bar),
                    "latency_p_value": _round(1.0 / latency.fail.peak),
                    "latency_pass_evidence": _round(latency.pass_.value()),
                    "latency_pairs": latency.pairs,
                    "latency_slower_share": _round(latency.slower / latency.pairs)
                    if latency.pairs
                    else 0.0,
                }
            )
        figures.update(
            latency_figures(self._canary_window.values(), self._baseline_window.values())
        )
        return figures


def _round(value: float) -> float:
    """Keep figures readable: 4 significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.4g}")
