"""Judges by name: the registry, its settings, and the helpers every judge shares."""

from __future__ import annotations

import json
import math
import random

import pytest

from canarist.errors import ConfigError
from canarist.judges import (
    DEFAULT_JUDGE,
    MannWhitneyJudge,
    MannWhitneySettings,
    Observation,
    Sample,
    SequentialJudge,
    SequentialSettings,
    ThresholdJudge,
    ThresholdSettings,
    judge_names,
    make_judge,
    settings_model,
)
from canarist.judges.base import Counts, LatencyHistogram, quantile


@pytest.mark.parametrize(
    ("name", "kind", "settings"),
    [
        ("threshold", ThresholdJudge, ThresholdSettings),
        ("mann-whitney", MannWhitneyJudge, MannWhitneySettings),
        ("sequential", SequentialJudge, SequentialSettings),
    ],
)
def test_every_judge_by_name(name: str, kind: type, settings: type) -> None:
    """Each name builds its judge with default settings; a fresh analysis answers at once."""
    judge = make_judge(name)
    assert isinstance(judge, kind)
    assert judge.name == name
    assert settings_model(name) is settings
    verdict = judge.begin().update(Observation(0.25, Sample(), Sample()))
    assert verdict.outcome in ("continue", "no_data")
    assert verdict.reason


def test_the_default_is_the_sequential_judge() -> None:
    """The spec's default judge, and the names a spec may use."""
    assert DEFAULT_JUDGE == "sequential"
    assert judge_names() == ("mann-whitney", "sequential", "threshold")


def test_an_unknown_judge_lists_the_valid_ones() -> None:
    """An unknown name is one ConfigError line naming the valid ones."""
    with pytest.raises(ConfigError, match=r"unknown judge 'bayes' \(valid: mann-whitney, "):
        make_judge("bayes")


def test_settings_are_validated() -> None:
    """Unknown keys and bad values are ConfigErrors naming the judge and the setting."""
    with pytest.raises(ConfigError, match="judge 'threshold': max_eror_rate"):
        make_judge("threshold", {"max_eror_rate": 0.02})
    with pytest.raises(ConfigError, match="judge 'sequential': alpha"):
        make_judge("sequential", {"alpha": 2})


def test_settings_take_durations_as_users_write_them() -> None:
    """Intervals accept "2m", "90s" or plain seconds."""
    judge = make_judge("threshold", {"interval": "2m", "failure_limit": 3})
    assert isinstance(judge, ThresholdJudge)
    assert judge.settings.interval == 120.0
    assert judge.settings.failure_limit == 3
    sequential = make_judge("sequential", {"block_window": "2s", "alpha": 0.05})
    assert isinstance(sequential, SequentialJudge)
    assert sequential.settings.block_window == 2.0


def test_counts_turn_cumulative_samples_into_increments() -> None:
    """Increments from cumulative counts; a counter that goes down restarted from zero."""
    counts = Counts()
    assert counts.advance(Sample(100, 2)) == (100, 2)
    assert counts.advance(Sample(150, 2)) == (50, 0)
    assert counts.advance(Sample(30, 1)) == (30, 1)  # HAProxy reloaded: counters restarted
    assert (counts.requests, counts.failures) == (180, 3)
    assert counts.rate == pytest.approx(3 / 180)


def test_latency_histogram_quantiles_are_within_one_percent() -> None:
    """The log-bucket histogram agrees with exact quantiles to within its 2 % buckets."""
    rng = random.Random(0)
    values = [rng.lognormvariate(4, 0.7) for _ in range(20_000)]
    histogram = LatencyHistogram()
    histogram.extend(values)
    ordered = sorted(values)
    for q, estimate in zip((0.5, 0.9, 0.99), histogram.quantiles((0.5, 0.9, 0.99)), strict=True):
        assert estimate == pytest.approx(quantile(ordered, q), rel=0.015)
    assert math.isnan(LatencyHistogram().quantile(0.5))
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


@pytest.mark.parametrize("name", ["threshold", "mann-whitney", "sequential"])
def test_figures_are_plain_json(name: str) -> None:
    """Figures go into status and history as JSON: no NaN or infinity, even at 0 ms latencies."""
    analysis = make_judge(name, {"interval": 1} if name != "sequential" else {}).begin()
    for step in range(1, 400):
        canary = Sample(step * 10, step // 3, (0.0, 1.0, 2.0))
        verdict = analysis.update(
            Observation(step * 0.25, canary, Sample(step * 90, 0, (0.0,) * 9))
        )
        json.dumps(verdict.figures, allow_nan=False)
