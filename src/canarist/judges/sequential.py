"""The `sequential` judge (the default): anytime-valid tests that stop as soon as they can.

Two tests watch the canary side by side with the baseline. Both may be looked at after
every observation (four times a second) for as long as the analysis runs, without
inflating their error rates.

Error rate: label-versus-outcome e-values against the baseline, plus an absolute floor
    Under "the canary fails no more often than the baseline", whether a request went to
    the canary or to the baseline (its label; the router decides it) tells nothing about
    whether it failed, whatever the common failure rate is at that moment: a shared
    outage fails both releases alike and is no evidence against the canary. That is
    the null. Requests are grouped into blocks, each closed by an observation interval
    that saw a failure and reaching back over the failure-free intervals before it (at
    most `block_window` seconds). For a block's f failed and m succeeded requests, with
    q0 = w, the canary's traffic share estimated from earlier requests, and
    q1 = w psi / (w psi + 1 - w) for an odds ratio psi, both fixed before the block,
        E = prod over the block's requests of q(label) / q_pool(label),
        q_pool = (f q1 + m q0) / (f + m),
    has expectation at most 1 under the null for any block sizes: it is the e-variable
    for 2x2 tables of Turner, Ly & Grunwald (2024). Conditioning on which requests
    failed is the case-or-control view of Kulldorff et al.'s binomial MaxSPRT (2011).
    With long blocks q_pool is close to w, so each canary failure multiplies the
    evidence by almost q1 / w and each baseline failure by (1 - q1) / (1 - w), even
    when a poll sees only a few requests. While the interval being scored holds more
    requests than the share was estimated from (the first seconds), it is scored by
    Fisher's exact conditional ratio instead (see below); the choice looks only at the
    past and at request totals, so it keeps the guarantee.

    A mixture of these e-values over a grid of odds ratios psi > 1 (Robbins 1970; the
    mSPRT of Johari et al. 2017) is a non-negative supermartingale under the null, so
    by Ville's inequality (1939) it *ever* reaches 1/a with probability at most a,
    however often it is looked at. Against a large regression it decides like Wald's
    SPRT (1945) for the right odds ratio, at the cost of the log of the grid's size.

    Error rates below `min_error_rate` are never a reason to roll back: a second
    mixture tests "canary error rate <= min_error_rate" on the canary's own binomial
    counts, and a rollback needs both tests to reject (an intersection-union test,
    Berger 1982, which keeps the level). Without it, a canary with 2 failures in
    100,000 requests would be rolled back for being worse than a baseline with none.

    Pass when Wald's likelihood ratio of odds ratio 1 against the stated degradation
    psi1 = `error_degradation` reaches 1/beta. It is computed over strata of
    `block_window` seconds with Fisher's noncentral hypergeometric law, the exact
    conditional law of the canary's share of a stratum's failures (strata as in Mantel &
    Haenszel 1959), so it is a supermartingale while psi >= psi1: a canary that much
    worse passes with probability at most beta. It is averaged with an absolute
    ratio ("canary error rate below psi1 * min_error_rate") so that releases that never
    fail can pass too. A pass holds for the stage it was reached in: when the canary's
    weight changes, the pass evidence (and `min_requests`) start again on the new
    stage's traffic, while the rollback tests go on throughout, before a pass and after.

Latency: a sequential rank test on contemporaneous pairs
    Each canary latency sample is compared with up to `baseline_per_canary` fresh
    baseline samples taken at about the same time; each sample is used once, so the
    comparisons are independent. If the canary is no slower than the baseline scaled by
    1 + latency_tolerance plus latency_floor_ms, the number R of those shifted baseline
    samples it exceeds is at most uniform on 0..k, whatever the latency distribution.
    Against Lehmann alternatives (canary CDF = F^a, Lehmann 1953) R is beta-binomial, and
    a mixture over a > 1 of those likelihood ratios is again a supermartingale under the
    null. The pass side compares with the baseline scaled by 1 + latency_degradation
    (plus the floor) and mixes over a < 1. The floor keeps differences of a few
    milliseconds, below what HAProxy's whole-millisecond logs resolve and what a freshly
    started instance's first requests cost, from ever rolling a release back.

When the split is not random: the canary alone, or only on request
    When the router gives the canary all the traffic (blue-green's warm period, a last
    100 % step), no baseline runs beside it to compare with; when it gives it none
    (blue-green's preview, a canary starting), its requests are those that asked for
    it with the canary header, chosen by clients rather than at random, and the
    label-versus-outcome null no longer holds. When the caller says so
    (`Observation.canary_weight` 1 or 0), each interval of such a stretch multiplies
    every component of the rollback mixture by a one-sample likelihood ratio instead:
    the canary's own outcomes under the rate its odds ratio psi gives to a reference
    rate r0, against r0. The reference is an upper bound of the baseline's rate over
    the analysis so far, or over the router's recent history
    (`Observation.baseline_recent`) when that saw more: Chernoff's bound, fixed before
    the outcomes it judges, and bound again each time the baseline's requests have
    doubled (a baseline runs beside a canary on request); the k-th bound of a rollout is
    too low with probability at most 6 / (pi^2 k^2) of REFERENCE_SHARE of the error test's
    alpha. While they hold and the canary fails no more often than the baseline, those
    factors have expectation at most 1 given the past, so the mixture stays a
    supermartingale and keeps its bar. Unlike the relative test, this cannot tell a
    failure that hits every release from the canary's own (for the canary alone, the
    price of having no baseline running, as in Argo Rollouts' post-promotion analysis),
    and on request it judges the requests that testers chose (whose latencies are not
    compared then: testers may well ask for slow pages). Latency, for a canary alone, is
    compared with the baseline's latest latencies from before (the router's
    `Observation.baseline_recent_ms`, or the latest this analysis saw, whichever are
    more), each used once, oldest first, as the rank test above uses fresh baseline
    samples. Once they are used up (within seconds when every request is logged), the
    watch goes on: each later canary latency is held to their median m, which, scaled as
    the rank test scales, it exceeds under the null with probability at most the
    reference's share above m plus a Dvoretzky-Kiefer-Wolfowitz margin (Massart 1990);
    the k-th such bound of a rollout fails with probability at most 6 / (pi^2 k^2) of
    REFERENCE_SHARE of the latency test's alpha. A Bernoulli likelihood ratio against the
    bound per mixture component keeps the mixture a supermartingale while the bound
    holds. The analysis should start before the canary takes traffic, so that the
    baseline's rate is known by then (the controller starts it with the rollout).

Every second a fresh start, so that a late regression need not outweigh the good before it
    Under the null a mixture drifts down, and after a long good stretch a regression
    would first have to climb back: at hundreds of requests a second, a minute of good
    ones sinks it by hundreds of nats. So each rollback mixture adds to its run from the
    start (weighted FIRST_RUN_SHARE) a run from every later second s, weighted
    (1 - FIRST_RUN_SHARE) c / ((s + c) (s + c + 1)) with c = LATER_RUNS_SPREAD: a sum of
    supermartingales whose weights add up to less than 1, kept in one number per
    component (the Shiryaev-Roberts recursion; the e-detectors of Shin, Ramdas &
    Rinaldo 2024), that alarms at 1 / a whatever the second a regression began, at a
    cost of about log((s + c)^2 / c) in evidence. The error test's floor is such a sum
    too, and a rollback needs both sums at the bar at the same moment: an
    intersection-union test again, so each may follow the regression from the second it
    began. (Restarting the mixtures once a minute instead, as earlier versions did, left
    a regression that began just after a restart waiting for the next one.)

Guarantees and defaults
    alpha = 0.01 is the false-rollback rate of the whole judge, under continuous
    monitoring: a = alpha * (1 - latency_share) for errors and alpha * latency_share for
    latency (union bound), each keeping REFERENCE_SHARE of its part for the bounds that
    a canary judged on its own is held to. beta = 0.1: a canary whose failure odds are
    twice the baseline's (error_degradation = 2), or whose latencies are 25 % higher plus
    the 5 ms floor (latency_degradation = 0.25, latency_floor_ms = 5: the floor counts on
    both sides, or a fresh 2 ms release beside a warm 1 ms one could never pass), passes
    with probability at most 0.1 (power 0.9). No pass before `min_requests` canary
    requests; until then the verdict is no_data.

Assumptions: requests are split between the releases independently of how likely they
are to fail (by weight, not by a client property that also drives failures: with sticky
sessions a client's later requests follow its first, so a client that fails everywhere
and is pinned to the canary would weigh against it, which is why the controller leaves
the requests a sticky cookie routes out of the comparison); the
canary's traffic share holds steady within a block. That one matters: were the share to
rise inside a block just as an outage hit both releases, the outage's failures would
fall on the canary more often than the block's successes do. So when the caller says
what the router's weights are (`Observation.canary_weight`, as the controller does),
blocks and strata never span a change of them: the one in progress ends, the intervals
within SHARE_SETTLE seconds of the change are left out, and the share is learnt afresh.
Latency samples of the two releases within a pairing window are independent draws from
their distributions. Ties between latencies count against
rejecting. The tests are one-sided: a canary better than the baseline is no reason to
roll back.

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
    R. J. Turner, A. Ly, P. D. Grunwald (2024), Generic E-variables for exact sequential
        k-sample tests that allow for optional stopping, J. Stat. Plan. Inference 230.
    N. Mantel, W. Haenszel (1959), Statistical aspects of the analysis of data from
        retrospective studies of disease, J. Natl. Cancer Inst. 22(4).
    E. L. Lehmann (1953), The power of rank tests, Ann. Math. Stat. 24(1).
    R. L. Berger (1982), Multiparameter hypothesis testing and acceptance sampling,
        Technometrics 24(4).
    J. Shin, A. Ramdas, A. Rinaldo (2024), E-detectors: a nonparametric framework for
        sequential change detection, New England J. Stat. Data Sci. 2(2).
    P. Massart (1990), The tight constant in the Dvoretzky-Kiefer-Wolfowitz
        inequality, Ann. Probab. 18(3).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from pydantic import Field, model_validator

from canarist.domain.durations import Seconds
from canarist.judges.base import (
    CONTINUE,
    FAIL,
    NO_DATA,
    PASS,
    Counts,
    Figure,
    JudgeSettings,
    LatencyHistogram,
    Observation,
    Stages,
    Verdict,
    histogram_figures,
    percent,
)

# Odds ratios (canary over baseline) the rollback mixture spreads its weight over.
# Coarse on purpose: each point costs log(len) of evidence, and neighbours overlap.
ERROR_GRID = (1.5, 2.5, 5.0, 10.0, 30.0, 200.0)
# Lehmann exponents a: one comparison finds the canary slower with probability a/(a+1).
LATENCY_FAIL_GRID = (1.5, 2.0, 3.0, 6.0, 20.0)
LATENCY_PASS_GRID = (0.8, 0.6, 0.4, 0.2)
# Part of the pass evidence given to the relative (odds-ratio) test; the rest goes to
# the absolute one, which only matters for releases that (almost) never fail.
RELATIVE_PASS_WEIGHT = 0.8
# Seconds of traffic that the canary's share is estimated from.
SHARE_WINDOW = 30.0
# After the canary's share of traffic changes, intervals within this many seconds of the
# change are left out of the error test: they may hold traffic split both ways (the
# router applies a weight between two metric polls, which lag by up to a quarter second).
SHARE_SETTLE = 0.5
# Part of the error test's alpha kept for the bounds on the baseline's rate that a canary
# judged on its own (all the traffic on it, or none but what asks for it) is held to.
REFERENCE_SHARE = 0.1
# The baseline's latest latencies a canary alone is compared with, at most.
REFERENCE_LATENCIES = 16_384
# The part of a rollback mixture's alpha kept for its run from the start; the rest goes
# to the runs from every later second.
FIRST_RUN_SHARE = 0.8
# The run from second s weighs (1 - FIRST_RUN_SHARE) c / ((s + c) (s + c + 1)) with
# c = LATER_RUNS_SPREAD: within a factor of four over the first c seconds, then falling
# as 1 / s^2. A regression in the first seconds is the first run's to catch anyway.
LATER_RUNS_SPREAD = 60


class SequentialSettings(JudgeSettings):
    """Settings of the sequential judge (the defaults are the product's defaults)."""

    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    """False-rollback rate of the whole judge, under continuous monitoring."""
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
    """How much slower than the baseline (plus the floor) a canary must not pass (0.25 =
    25 %)."""
    latency_floor_ms: float = Field(default=5.0, ge=0)
    """Milliseconds of latency a canary may add on top of the tolerance without a
    rollback; a canary must be slower by the degradation plus these not to pass."""
    min_requests: int = Field(default=200, ge=1)
    """Canary requests before a pass is possible; below it the verdict is no_data."""
    baseline_per_canary: int = Field(default=4, ge=1, le=64)
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


# ---------------------------------------------------------------- e-processes


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum([math.exp(v - top) for v in values]))


def _exp(log_value: float) -> float:
    return math.exp(min(log_value, 700.0))


class _Mixture:
    """An equally weighted mixture of likelihood ratios, each kept as a running log."""

    def __init__(self, size: int) -> None:
        self.logs = [0.0] * size
        self._log_weight = -math.log(size)
        self.value = 1.0  # the mixture's likelihood ratio (an e-value)

    def add(self, increments: Sequence[float]) -> None:
        """Multiply each component by exp(increment)."""
        logs = self.logs
        for i, increment in enumerate(increments):
            logs[i] += increment
        self.value = _exp(_logsumexp(logs) + self._log_weight)


class _Detector:
    """A rollback mixture: a run from the start, and the rest of alpha on runs from every
    later second, summed (see the module docstring).

    For each component, `first` is its log likelihood ratio since the start and `later`
    the log of sum over starts s of w_s times its likelihood ratio since s, with
    w_s = c / ((s + c) (s + c + 1)) for the s-th second (c = LATER_RUNS_SPREAD): kept by
    later <- later + increment, and later <- log(exp(later) + w_s) as seconds begin.
    Each such term is a supermartingale under the null and the weights sum to at most
    1, so the mixture of the two, weighted FIRST_RUN_SHARE and 1 - FIRST_RUN_SHARE,
    ever reaches 1 / alpha with probability at most alpha (Ville). Unlike restarts, no
    stretch of good evidence before a regression has to be climbed back: the run from
    the second it began counts too.
    """

    def __init__(self, size: int, alpha: float) -> None:
        self.first = [0.0] * size
        self.later = [-math.inf] * size
        self._log_size = math.log(size)
        self._seconds = 0  # later runs begun
        self.bar = 1.0 / alpha
        self.evidence = FIRST_RUN_SHARE  # the run from the start, at 1; none later yet
        self.peak = self.evidence
        self.alarmed = False

    def begin_due(self, now: float) -> None:
        """Begin the later runs of the seconds that have started by `now`."""
        due = math.floor(now)
        if due <= self._seconds:
            return
        # sum over s in (begun, due] of c / ((s + c) (s + c + 1)): it telescopes
        c = LATER_RUNS_SPREAD
        log_weight = math.log(c * (1 / (self._seconds + c + 1) - 1 / (due + c + 1)))
        self.later = [_logsumexp([log, log_weight]) for log in self.later]
        self._seconds = due

    def add(self, increments: Sequence[float]) -> None:
        """Multiply each component's runs by exp(increment); raise the alarm at the bar."""
        first, later = self.first, self.later
        for i, increment in enumerate(increments):
            first[i] += increment
            later[i] += increment
        log_first = math.log(FIRST_RUN_SHARE)
        log_later = math.log(1 - FIRST_RUN_SHARE)
        self.evidence = _exp(
            _logsumexp([log + log_first for log in first] + [log + log_later for log in later])
            - self._log_size
        )
        self.peak = max(self.peak, self.evidence)
        self.alarmed = self.alarmed or self.evidence >= self.bar

    def p_value(self) -> float:
        """Always-valid p-value: under the null, P(it ever falls to p or below) <= p."""
        return min(1.0, 1.0 / self.peak)


class _BothDetectors:
    """The error test's rollback: the relative detector (the canary against the baseline,
    or against the baseline's rate when judged on its own) and the floor's ("the canary
    fails at most min_error_rate", on its own counts), each at the same alpha. It alarms
    when both are at the bar at once: an intersection-union test (Berger 1982), at level
    alpha whichever of the two nulls holds. `evidence` is the lower of the two.
    """

    def __init__(self, size: int, alpha: float, floor: _RateMixture | None) -> None:
        self.relative = _Detector(size, alpha)
        self._floor = None if floor is None else (floor, _Detector(floor.size, alpha))
        self._failed = False  # with no floor, one canary failure clears it
        self.bar = self.relative.bar
        self.evidence = min(self.relative.evidence, self._floor_evidence())
        self.peak = self.evidence
        self.alarmed = False

    def begin_due(self, now: float) -> None:
        """Begin both detectors' later runs of the seconds that have started by `now`."""
        self.relative.begin_due(now)
        if self._floor is not None:
            self._floor[1].begin_due(now)

    def add(self, increments: Sequence[float]) -> None:
        """Multiply the relative detector's components by exp(increment)."""
        self.relative.add(increments)
        self._check()

    def canary(self, requests: int, failures: int) -> None:
        """Take in the canary's own requests and failures of an interval (for the floor)."""
        if self._floor is not None:
            rates, detector = self._floor
            detector.add(rates.logs(requests, failures))
        self._failed = self._failed or failures > 0
        self._check()

    def _floor_evidence(self) -> float:
        if self._floor is not None:
            return self._floor[1].evidence
        return math.inf if self._failed else 1.0

    def _check(self) -> None:
        self.evidence = min(self.relative.evidence, self._floor_evidence())
        self.peak = max(self.peak, self.evidence)
        self.alarmed = self.alarmed or self.evidence >= self.bar

    def p_value(self) -> float:
        """Always-valid p-value: under the null, P(it ever falls to p or below) <= p."""
        return min(1.0, 1.0 / self.peak)


class _RateMixture:
    """A mixture over rates r of the canary's binomial likelihood ratios against rate r0.

    Each log ratio is affine in the canary's totals, so it is computed from them when
    asked rather than at every observation.
    """

    def __init__(self, rates: Sequence[float], null: float) -> None:
        self.size = len(rates)
        self._per_failure = [math.log(r / null) for r in rates]
        self._per_success = [math.log((1 - r) / (1 - null)) for r in rates]
        self._log_weight = -math.log(len(rates))

    def logs(self, requests: int, failures: int) -> list[float]:
        """Each rate's log likelihood ratio over that many requests and failures."""
        successes = requests - failures
        return [
            failures * f + successes * s
            for f, s in zip(self._per_failure, self._per_success, strict=True)
        ]

    def value(self, requests: int, failures: int) -> float:
        """The mixture's likelihood ratio over that many requests and failures."""
        return _exp(_logsumexp(self.logs(requests, failures)) + self._log_weight)


class _Stratum:
    """A stretch of traffic with failures, as a 2x2 table with fixed margins.

    Given the stretch's f failures among n_c canary and n_b baseline requests, the
    number x that the canary served follows Fisher's noncentral hypergeometric law with
    odds ratio psi, whatever the common failure rate was (strata as in Mantel &
    Haenszel 1959): P(x) = C(n_c, x) C(n_b, f - x) psi^x / G(psi), G summing the
    numerator over the support. Likelihood ratios between odds ratios are exact and
    need no estimate of the canary's share, but a short stretch says little.
    """

    def __init__(self, low: int, log_h: list[float]) -> None:
        self.low = low
        self.log_h = log_h  # log C(n_c, y) C(n_b, f - y) up to a constant, y = low...

    @classmethod
    def of(cls, n_c: int, x: int, n_b: int, x_b: int) -> _Stratum | None:
        """The stratum of a stretch of traffic, or None when it carries no evidence."""
        f = x + x_b
        low, high = max(0, f - n_b), min(f, n_c)
        if f == 0 or low == high:
            return None  # no failure, or where the failures fell was forced
        log_h = [0.0]
        for y in range(low, high):  # by the ratio of neighbouring terms
            ratio = (n_c - y) * (f - y) / ((y + 1) * (n_b - f + y + 1))
            log_h.append(log_h[-1] + math.log(ratio))
        return cls(low, log_h)

    def log_ratio(self, x: int, log_psi: float, log_psi_null: float) -> float:
        """log of P_psi(x) / P_psi_null(x)."""
        return x * (log_psi - log_psi_null) + self._log_g(log_psi_null) - self._log_g(log_psi)

    def _log_g(self, log_psi: float) -> float:
        low = self.low
        return _logsumexp([h + (low + i) * log_psi for i, h in enumerate(self.log_h)])


# ---------------------------------------------------------------- the two tests


class _ErrorTest:
    """The error-rate half of the judge: relative tests against the baseline, absolute floor."""

    def __init__(self, settings: SequentialSettings, alpha: float) -> None:
        self.block_window = settings.block_window
        self._log_grid = [math.log(psi) for psi in ERROR_GRID]
        self._log_psi1 = math.log(settings.error_degradation)
        self.pass_log = 0.0  # log likelihood ratio of odds ratio 1 against psi1
        self._stratum_totals = [0, 0, 0, 0]  # n_c, x_c, n_b, x_b of the pass stratum
        self._stratum_ends = self.block_window
        # Requests not yet in a block (no failure among them), newest last: (time, n_c, n_b).
        self._pending: deque[tuple[float, int, int]] = deque()
        # Requests already used, for the canary's traffic share: (time, n_c, n_c + n_b).
        self._history: deque[tuple[float, int, int]] = deque()
        self._history_canary = 0
        self._history_total = 0
        self.share = 0.5
        # The canary's totals.
        self.canary_requests = 0
        self.canary_failures = 0
        floor = settings.min_error_rate
        floor_fail: _RateMixture | None = None
        self._floor_pass: _RateMixture | None = None
        if floor > 0:
            # H0 "canary rate <= floor" against higher rates; for a pass, H "canary rate
            # >= psi1 * floor" against lower ones.
            floor_fail = _RateMixture(_floor_grid(floor), floor)
            degraded = min(settings.error_degradation * floor, 0.5)
            self._floor_pass = _RateMixture((degraded / 2, degraded / 8), degraded)
        self._floor_pass_at = (-1, -1)
        self._pass_from = (0, 0)  # the canary's totals when the pass evidence began
        self._floor_pass_value = 1.0
        self.fail = _BothDetectors(len(ERROR_GRID), alpha * (1 - REFERENCE_SHARE), floor_fail)
        self._steady_from = -math.inf  # intervals ending before this are left out
        self._reference_alpha = alpha * REFERENCE_SHARE
        self._min_error_rate = settings.min_error_rate
        self.baseline_requests = 0
        self.baseline_failures = 0
        self.stretch: _OnItsOwn | None = None  # judged on its own: the current or last
        self._bounds = 0  # references bound so far

    def share_changed(self, now: float) -> None:
        """The router's split moved in the interval ending at `now`: no block or stratum
        may span the change (module docstring, assumptions). The open pass stratum is
        scored as it stood, unscored requests are let go, and the share is learnt again."""
        totals = self._stratum_totals
        if now >= self._steady_from:  # a stratum open since the last settled change
            stratum = _Stratum.of(*totals)
            if stratum is not None:
                self.pass_log += stratum.log_ratio(totals[1], 0.0, self._log_psi1)
        self._stratum_totals = [0, 0, 0, 0]
        self._steady_from = now + SHARE_SETTLE
        self._stratum_ends = self._steady_from + self.block_window
        self._pending.clear()
        self._history.clear()
        self._history_canary = self._history_total = 0
        self.share = 0.5

    def on_its_own(self, now: float, recent: tuple[int, int] | None, kind: str) -> bool:
        """The split is not random from now (`kind`: "alone", all the traffic on the
        canary; "on request", none but what asks for it): judge the canary's own outcomes
        against the baseline's rate in a stretch of its own. The rate is the baseline's
        over this analysis, or over the router's `recent` history if that saw more."""
        if self.stretch is not None and self.stretch.open and self.stretch.kind == kind:
            return False
        self.stretch = _OnItsOwn(kind, now, recent)
        return True

    def _bound_reference(self, stretch: _OnItsOwn) -> None:
        """Fix the stretch's reference, before the canary outcomes it will judge, from the
        baseline's counts over this analysis or the router's history, whichever saw more;
        again each time they have doubled (a baseline runs beside a canary on request).
        Bound k may be too low with probability 6 / (pi^2 k^2) of the reference alpha: all of
        a rollout's bounds together stay within it."""
        requests, failures = self.baseline_requests, self.baseline_failures
        if stretch.recent is not None and stretch.recent[0] > requests:
            requests, failures = stretch.recent[0], min(stretch.recent[1], stretch.recent[0])
        again = stretch.per_request is not None
        if not requests or (again and requests < max(2 * stretch.reference_requests, 100)):
            return
        self._bounds += 1
        alpha = self._reference_alpha * 6 / (math.pi**2 * self._bounds**2)
        reference = max(_upper_rate(failures, requests, alpha), self._min_error_rate)
        odds = reference / (1 - reference)
        rates = [odds * psi / (1 + odds * psi) for psi in ERROR_GRID]
        stretch.reference, stretch.reference_requests = reference, requests
        stretch.per_request = [
            (math.log(r / reference), math.log((1 - r) / (1 - reference))) for r in rates
        ]

    def update(self, now: float, n_c: int, x_c: int, n_b: int, x_b: int) -> None:
        """Take in one interval ending at `now`: requests and failures of each release."""
        self.fail.begin_due(now)
        if n_c:
            self.fail.canary(n_c, x_c)
        self.canary_requests += n_c
        self.canary_failures += x_c
        self.baseline_requests += n_b
        self.baseline_failures += x_b
        stretch = self.stretch
        if stretch is not None and stretch.open:
            if n_c:  # bound only when there is something to judge: bounds spend alpha
                self._bound_reference(stretch)
            # The canary's own outcomes, whatever the split was in this interval.
            stretch.requests += n_c
            stretch.failures += x_c
            if stretch.per_request is not None and n_c:
                successes = n_c - x_c
                self.fail.add([x_c * f + successes * s for f, s in stretch.per_request])
                stretch.decided = self.fail.alarmed
            return
        if now <= self._steady_from:
            return  # the split moved during this interval: it is no evidence either way
        stratum = _Stratum.of(n_c, x_c, n_b, x_b)
        self._rollback_block(now, n_c, x_c, n_b, x_b, stratum)
        self._pass_stratum(now, n_c, x_c, n_b, x_b)

    def _rollback_block(
        self, now: float, n_c: int, x_c: int, n_b: int, x_b: int, stratum: _Stratum | None
    ) -> None:
        """Close a block at every interval with failures, and score it (module docstring)."""
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
        succeeded = block_c + block_b - failures
        canary_succeeded = block_c - x_c
        w = self.share  # from requests before the block only: fixed before it
        if self._history_total < n_c + n_b:
            if stratum is not None:
                self.fail.add([stratum.log_ratio(x_c, lp, 0.0) for lp in self._log_grid])
        elif succeeded > 0:
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

    def _pass_stratum(self, now: float, n_c: int, x_c: int, n_b: int, x_b: int) -> None:
        """Add to the current pass stratum; at its end, add its exact conditional ratio.

        Strata are fixed `block_window`-second windows: a pass can wait a few seconds,
        and a longer stratum's canary share is steadier, so each failure says more.
        """
        totals = self._stratum_totals
        totals[0] += n_c
        totals[1] += x_c
        totals[2] += n_b
        totals[3] += x_b
        if now < self._stratum_ends:
            return
        stratum = _Stratum.of(*totals)
        if stratum is not None:
            self.pass_log += stratum.log_ratio(totals[1], 0.0, self._log_psi1)
        self._stratum_totals = [0, 0, 0, 0]
        self._stratum_ends = (math.floor(now / self.block_window) + 1) * self.block_window

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

    def restart_pass(self) -> None:
        """Gather the evidence to pass afresh, from the canary's requests from now on."""
        self.pass_log = 0.0
        self._pass_from = (self.canary_requests, self.canary_failures)

    def pass_evidence(self) -> float:
        """Evidence that the canary is not degraded (an e-value against the degradation)."""
        relative = _exp(self.pass_log)
        if self._floor_pass is None:
            return relative
        start_requests, start_failures = self._pass_from
        totals = (self.canary_requests - start_requests, self.canary_failures - start_failures)
        if totals != self._floor_pass_at:  # most polls at low traffic bring no canary request
            self._floor_pass_at = totals
            self._floor_pass_value = self._floor_pass.value(*totals)
        return RELATIVE_PASS_WEIGHT * relative + (1 - RELATIVE_PASS_WEIGHT) * (
            self._floor_pass_value
        )


def _floor_grid(floor: float) -> tuple[float, ...]:
    candidates = {floor * m for m in (2, 5, 20, 100)} | {0.3, 0.9}
    return tuple(sorted(r for r in candidates if floor < r < 1))


class _OnItsOwn:
    """A stretch with the canary judged on its own ("alone" or "on request"): the
    reference rate it is judged against (an upper bound of the baseline's rate, None
    until a baseline request is seen), the baseline requests that bound came from, and
    the per-failure and per-success log likelihood ratios of each rollback component's
    rate against it."""

    def __init__(self, kind: str, started: float, recent: tuple[int, int] | None) -> None:
        self.kind = kind
        self.started = started
        self.recent = recent  # the baseline's counts in the router's history, if told
        self.reference: float | None = None
        self.reference_requests = 0
        self.per_request: list[tuple[float, float]] | None = None
        self.open = True
        self.decided = False  # the rollback mixture reached its bar in this stretch
        self.requests = 0
        self.failures = 0


def _upper_rate(failures: int, requests: int, alpha: float) -> float:
    """A rate that `failures` in `requests` stays under with probability 1 - alpha: the
    largest p with requests * KL(failures / requests || p) <= log(1 / alpha) (Chernoff)."""
    observed = failures / requests
    budget = math.log(1 / alpha) / requests
    low, high = observed, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if _kl(observed, middle) <= budget:
            low = middle
        else:
            high = middle
    return high


def _kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence between Bernoulli(p) and Bernoulli(q)."""
    total = 0.0
    if p > 0:
        total += p * math.log(p / q)
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q)) if q < 1 else math.inf
    return total


class _LatencyTest:
    """The latency half of the judge: a sequential rank test on contemporaneous pairs."""

    def __init__(self, settings: SequentialSettings, alpha: float) -> None:
        self.k_max = settings.baseline_per_canary
        self.window = settings.pair_window
        self.fail_scale = 1 + settings.latency_tolerance
        self.pass_scale = 1 + settings.latency_degradation
        self.floor = settings.latency_floor_ms
        # REFERENCE_SHARE of alpha is kept for the bounds on the baseline's median that a
        # canary alone is held to once the latencies from before are used up.
        self.fail = _Detector(len(LATENCY_FAIL_GRID), alpha * (1 - REFERENCE_SHARE))
        self._bound_alpha = alpha * REFERENCE_SHARE
        self._bounds = 0  # bounds made in this analysis
        self.pass_ = _Mixture(len(LATENCY_PASS_GRID))
        self._fail_table = _lehmann_table(self.k_max, LATENCY_FAIL_GRID)
        self._pass_table = _lehmann_table(self.k_max, LATENCY_PASS_GRID)
        self._canary: deque[tuple[float, float]] = deque()
        self._baseline: deque[tuple[float, float]] = deque()
        # The baseline's latencies from before, while the canary is alone (None else).
        self.reference: deque[tuple[float, float]] | None = None
        # What the canary is held to once those are used up (None: nothing, or not alone).
        self.beyond: _BeyondReference | None = None
        self._latest: deque[float] = deque(maxlen=REFERENCE_LATENCIES)  # the baseline's
        self.pairs = 0
        self.slower = 0.0  # sum of R/k: the share of comparisons the canary lost

    def restart_pass(self) -> None:
        """Gather the evidence to pass afresh."""
        self.pass_ = _Mixture(len(LATENCY_PASS_GRID))

    def alone(self, from_router: Sequence[float]) -> None:
        """The canary is alone: compare it with the baseline's latencies from before, each
        used once, oldest first: those the router kept (`from_router`) or the latest this
        analysis saw, whichever are more."""
        latencies = from_router if len(from_router) > len(self._latest) else self._latest
        self.reference = deque((0.0, v) for v in latencies)
        self.beyond = None
        if latencies:
            self._bounds += 1
            delta = self._bound_alpha * 6 / (math.pi**2 * self._bounds**2)
            self.beyond = _BeyondReference.of(
                latencies, delta, self.fail_scale, self.floor, LATENCY_FAIL_GRID
            )

    def together(self) -> None:
        """The baseline runs beside the canary again: compare with its own latencies."""
        self.reference = None
        self.beyond = None

    def update(self, now: float, canary: Sequence[float], baseline: Sequence[float]) -> None:
        """Queue fresh samples, drop stale ones, and compare as many as can be paired."""
        self.fail.begin_due(now)
        pending_c = self._canary
        pending_c.extend([(now, v) for v in canary])
        cutoff = now - self.window
        while pending_c and pending_c[0][0] < cutoff:
            pending_c.popleft()
        if self.reference is not None:
            # Drawn without looking at their values, so comparisons stay independent.
            pending_b = self.reference
        else:
            pending_b = self._baseline
            pending_b.extend([(now, v) for v in baseline])
            self._latest.extend(baseline)
            while pending_b and pending_b[0][0] < cutoff:
                pending_b.popleft()
        beyond = self.beyond
        if not (pending_c and (pending_b or beyond is not None)):
            return
        fail_logs = [0.0] * len(LATENCY_FAIL_GRID)
        pass_logs = [0.0] * len(LATENCY_PASS_GRID)
        fail_scale, pass_scale, floor = self.fail_scale, self.pass_scale, self.floor
        while pending_c and pending_b:
            # How many baseline samples each canary sample gets depends only on counts,
            # never on values, so the comparisons stay independent and exchangeable.
            k = max(1, min(self.k_max, len(pending_b) // len(pending_c)))
            value = pending_c.popleft()[1]
            beaten = passed = 0
            for _ in range(k):
                other = pending_b.popleft()[1]
                beaten += other * fail_scale + floor < value  # a tie never counts to a rollback
                passed += other * pass_scale + floor <= value  # nor towards a pass
            for i, row in enumerate(self._fail_table[k]):
                fail_logs[i] += row[beaten]
            for i, row in enumerate(self._pass_table[k]):
                pass_logs[i] += row[passed]
            self.pairs += 1
            self.slower += beaten / k
        if beyond is not None and not pending_b:
            # The latencies from before are used up: what the canary answers from now on
            # is held to the bound on their median (only counts chose these samples).
            beyond.score([value for _, value in pending_c], fail_logs)
            pending_c.clear()
        self.fail.add(fail_logs)
        self.pass_.add(pass_logs)


class _BeyondReference:
    """A canary alone, once the baseline's latencies from before are used up: whether
    each of its latencies exceeds their median m scaled as the rank test scales (times
    1 + latency_tolerance, plus the floor). Under the null the canary exceeds it with
    probability at most P(baseline > m) <= p0, the reference's share above m plus
    the Dvoretzky-Kiefer-Wolfowitz margin sqrt(log(2 / delta) / 2n) (Massart 1990),
    which holds for every threshold at once, the median found from the same sample
    included, except with probability delta. Each latency multiplies component a of the
    rollback mixture by the Bernoulli likelihood ratio of p1 = 1 - (1 - p0)^a (the
    Lehmann alternative F^a at m) against p0; with p1 >= p0 its expectation is at most
    1 given everything before it, so the mixture stays a supermartingale."""

    def __init__(self, median: float, limit: float, p0: float, grid: Sequence[float]) -> None:
        self.median = median
        self.limit = limit
        self.above = [math.log((1 - (1 - p0) ** a) / p0) for a in grid]
        self.below = [(a - 1) * math.log(1 - p0) for a in grid]
        self.count = 0
        self.exceeded = 0

    @classmethod
    def of(
        cls,
        latencies: Sequence[float],
        delta: float,
        scale: float,
        floor: float,
        grid: Sequence[float],
    ) -> _BeyondReference | None:
        """The bound from a reference sample, or None if it says nothing (too few)."""
        ordered = sorted(latencies)
        n = len(ordered)
        median = ordered[n // 2]
        above = (n - bisect.bisect_right(ordered, median)) / n
        p0 = above + math.sqrt(math.log(2 / delta) / (2 * n))
        if p0 >= 1:
            return None
        return cls(median, median * scale + floor, p0, grid)

    def score(self, values: Sequence[float], logs: list[float]) -> None:
        """Add the canary latencies' log likelihood ratios to `logs`."""
        exceeded = sum(value > self.limit for value in values)  # a tie never counts
        within = len(values) - exceeded
        self.count += len(values)
        self.exceeded += exceeded
        for i, (up, down) in enumerate(zip(self.above, self.below, strict=True)):
            logs[i] += exceeded * up + within * down


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
                    + math.log(a)
                    + math.lgamma(r + a)
                    - math.lgamma(k + 1 + a)
                )  # C(k, r) a B(r + a, k - r + 1), with (k - r)! cancelled
                row.append(log_p + math.log(k + 1))
            rows.append(row)
        table.append(rows)
    return table


# ---------------------------------------------------------------- the analysis


class SequentialAnalysis:
    """One rollout's sequential analysis."""

    def __init__(self, settings: SequentialSettings) -> None:
        self.settings = settings
        latency_alpha = settings.alpha * settings.latency_share
        self._errors = _ErrorTest(settings, settings.alpha - latency_alpha)
        self._latency = _LatencyTest(settings, latency_alpha) if latency_alpha > 0 else None
        self._pass_bar = 1.0 / settings.beta
        self._latency_bar = self._latency.fail.bar if self._latency is not None else math.inf
        self._canary = Counts()
        self._baseline = Counts()
        self._canary_latency = LatencyHistogram()
        self._baseline_latency = LatencyHistogram()
        self._quantiles: dict[str, Figure] = {}
        self._quantiles_count = 0  # latency samples when the quantiles were computed
        self._stages = Stages()  # the canary's share by the router's weights
        self._final: Verdict | None = None  # a fail
        self._passed: str | None = None  # why the current stage passed, once it has
        self._stage_from = 0  # canary requests before the current stage

    def update(self, observation: Observation) -> Verdict:
        """Take in one observation; roll back, pass, or say how far the evidence has come."""
        if self._final is not None:
            return self._final
        now = observation.elapsed
        n_c, x_c = self._canary.advance(observation.canary)
        n_b, x_b = self._baseline.advance(observation.baseline)
        weight = observation.canary_weight
        if self._stages.moved(weight):
            self._errors.share_changed(now)
            # A new stage: its pass is earned afresh, on its own requests.
            self._errors.restart_pass()
            if self._latency is not None:
                self._latency.restart_pass()
            self._passed = None
            self._stage_from = self._canary.requests - n_c
        if weight is not None:
            if weight >= 1.0 or weight <= 0.0:
                kind = "alone" if weight >= 1.0 else "on request"
                started = self._errors.on_its_own(now, observation.baseline_recent, kind)
                if started and self._latency is not None:
                    if kind == "alone":
                        self._latency.alone(observation.baseline_recent_ms)
                    else:
                        self._latency.together()
            elif self._errors.stretch is not None and self._errors.stretch.open:
                self._errors.stretch.open = False
                if self._latency is not None:
                    self._latency.together()
        self._errors.update(now, n_c, x_c, n_b, x_b)
        canary_latencies = observation.canary.latencies_ms
        baseline_latencies = observation.baseline.latencies_ms
        if canary_latencies or baseline_latencies:
            self._canary_latency.extend(canary_latencies)
            self._baseline_latency.extend(baseline_latencies)
            stretch = self._errors.stretch
            on_request = stretch is not None and stretch.open and stretch.kind == "on request"
            # Testers' requests are not a sample of the traffic: their latencies say
            # nothing of the release's against the baseline's.
            if self._latency is not None and not on_request:
                self._latency.update(now, canary_latencies, baseline_latencies)
        verdict = self._verdict(now)
        if verdict.outcome == FAIL:
            self._final = verdict
        elif verdict.outcome == PASS:
            self._passed = verdict.reason
        return verdict

    def _verdict(self, elapsed: float) -> Verdict:
        s, errors, latency = self.settings, self._errors, self._latency
        error, error_pass = errors.fail.evidence, errors.pass_evidence()
        slower, faster = (
            (latency.fail.evidence, latency.pass_.value) if latency is not None else (0.0, math.inf)
        )
        evidence = (error, error_pass, slower, faster)
        stretch = errors.stretch
        if errors.fail.alarmed and stretch is not None and stretch.decided:
            assert stretch.reference is not None  # decided only with a reference
            which = (
                "did before it took all traffic"
                if stretch.kind == "alone"
                else "on the requests that asked for it (it has no weight)"
            )
            reason = (
                f"canary fails more than baseline {which}: {stretch.failures} of "
                f"{stretch.requests} canary requests failed, baseline at most "
                f"{percent(stretch.reference)} (evidence {error:.0f} >= {errors.fail.bar:.0f}; "
                f"false-rollback rate {s.alpha:g})"
            )
            return Verdict(FAIL, reason, self._figures(elapsed, evidence, fresh=True))
        if errors.fail.alarmed:
            reason = (
                f"canary fails more than baseline: {self._rates()} (evidence {error:.0f} "
                f">= {errors.fail.bar:.0f}; false-rollback rate {s.alpha:g})"
            )
            return Verdict(FAIL, reason, self._figures(elapsed, evidence, fresh=True))
        if latency is not None and latency.fail.alarmed:
            before = " before it took all traffic" if latency.reference is not None else ""
            compared = f"{latency.pairs} compared samples"
            beyond = latency.beyond
            if beyond is not None and beyond.count:
                compared += (
                    f" and {beyond.exceeded} of {beyond.count} later ones over "
                    f"{beyond.limit:.0f} ms, the baseline's median before plus the tolerance"
                )
            reason = (
                f"canary slower than baseline{before}: {self._medians()} over {compared} "
                f"(evidence {slower:.0f} >= {latency.fail.bar:.0f}; "
                f"false-rollback rate {s.alpha:g})"
            )
            return Verdict(FAIL, reason, self._figures(elapsed, evidence, fresh=True))
        if self._passed is not None:  # this stage passed: it holds, watched for a fail
            return Verdict(PASS, self._passed, self._figures(elapsed, evidence))
        stage_requests = self._canary.requests - self._stage_from
        if stage_requests < s.min_requests:
            reason = (
                f"not enough data: {stage_requests} of {s.min_requests} canary "
                f"requests needed before a pass"
            )
            return Verdict(NO_DATA, reason, self._figures(elapsed, evidence))
        if error_pass >= self._pass_bar and faster >= self._pass_bar:
            against = f"{s.error_degradation:g}x the baseline's error odds"
            if latency is not None:
                against += f" or {s.latency_degradation:.0%} slower"
            reason = (
                f"canary no worse than baseline: {self._rates()}"
                + (f", {self._medians()}" if latency is not None else "")
                + f" (evidence >= {self._pass_bar:.0f} against {against})"
            )
            return Verdict(PASS, reason, self._figures(elapsed, evidence, fresh=True))
        reason = (
            f"gathering evidence: {self._rates()}; to roll back {error:.3g} of "
            f"{errors.fail.bar:.0f} (errors), {slower:.3g} of {self._latency_bar:.0f} "
            f"(latency); to pass {min(error_pass, faster):.3g} of {self._pass_bar:.0f}"
        )
        if stretch is not None and stretch.open:
            reason += (
                f"; canary {stretch.kind}, against the baseline's rate: at most "
                f"{percent(stretch.reference)}"
                if stretch.reference is not None
                else f"; canary {stretch.kind} with no baseline rate to compare with"
            )
        return Verdict(CONTINUE, reason, self._figures(elapsed, evidence))

    def _rates(self) -> str:
        return (
            f"{percent(self._canary.rate)} of {self._canary.requests} canary requests failed "
            f"vs {percent(self._baseline.rate)} of the baseline's"
        )

    def _medians(self) -> str:
        canary = self._canary_latency.quantile(0.5)
        baseline = self._baseline_latency.quantile(0.5)
        return f"p50 {canary:.0f} ms vs {baseline:.0f} ms"

    def _figures(
        self, elapsed: float, evidence: tuple[float, float, float, float], fresh: bool = False
    ) -> dict[str, Figure]:
        """Everything behind the verdict: counts, rates, e-values, p-values, quantiles."""
        errors, latency = self._errors, self._latency
        canary, baseline = self._canary, self._baseline
        figures: dict[str, Figure] = {
            "judge": "sequential",
            "elapsed_s": elapsed,
            "canary_requests": canary.requests,
            "canary_failures": canary.failures,
            "canary_error_rate": canary.rate,
            "baseline_requests": baseline.requests,
            "baseline_failures": baseline.failures,
            "baseline_error_rate": baseline.rate,
            "canary_traffic_share": errors.share,
            "error_evidence": evidence[0],
            "error_evidence_to_fail": errors.fail.bar,
            "error_p_value": errors.fail.p_value(),
            "error_pass_evidence": evidence[1],
            "evidence_to_pass": self._pass_bar,
        }
        stretch = errors.stretch
        if stretch is not None and stretch.reference is not None:
            figures["judged_on_its_own"] = stretch.kind
            figures["on_its_own_requests"] = stretch.requests
            figures["on_its_own_failures"] = stretch.failures
            figures["reference_rate_bound"] = stretch.reference
            figures["reference_requests"] = stretch.reference_requests
        if latency is not None:
            figures["latency_evidence"] = evidence[2]
            figures["latency_evidence_to_fail"] = latency.fail.bar
            figures["latency_p_value"] = latency.fail.p_value()
            figures["latency_pass_evidence"] = evidence[3]
            figures["latency_pairs"] = latency.pairs
            figures["latency_slower_share"] = (
                latency.slower / latency.pairs if latency.pairs else 0.0
            )
            if latency.beyond is not None:
                figures["latency_reference_p50_ms"] = latency.beyond.median
                figures["latency_reference_limit_ms"] = latency.beyond.limit
                figures["latency_beyond_reference"] = latency.beyond.count
                figures["latency_beyond_reference_over_limit"] = latency.beyond.exceeded
        # Quantiles over the whole analysis barely move once there are many samples:
        # recompute them when the samples have grown by 5 %, and for a decision.
        count = self._canary_latency.count + self._baseline_latency.count
        if fresh or count >= self._quantiles_count * 1.05:
            self._quantiles = histogram_figures(self._canary_latency, self._baseline_latency)
            self._quantiles_count = max(count, 1)
        figures.update(self._quantiles)
        return figures
