"""Judges: pass / fail / keep going, comparing the canary with the baseline.

One module per judge behind the `Judge` protocol (`base.py`), and a registry that maps a
name from the spec to a judge built from its settings:

    threshold     per-interval limits, like Flagger and Argo Rollouts   (threshold.py)
    mann-whitney  rank test on latencies each interval, like Kayenta     (mann_whitney.py)
    sequential    anytime-valid sequential tests, the default            (sequential.py)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from canarist.domain.validation import parse_settings
from canarist.errors import ConfigError
from canarist.judges.base import (
    CONTINUE,
    FAIL,
    NO_DATA,
    PASS,
    Analysis,
    Judge,
    JudgeSettings,
    Observation,
    Outcome,
    Sample,
    Verdict,
)
from canarist.judges.mann_whitney import MannWhitneyJudge, MannWhitneySettings
from canarist.judges.sequential import SequentialJudge, SequentialSettings
from canarist.judges.threshold import ThresholdJudge, ThresholdSettings

__all__ = [
    "CONTINUE",
    "DEFAULT_JUDGE",
    "FAIL",
    "NO_DATA",
    "PASS",
    "Analysis",
    "Judge",
    "JudgeSettings",
    "MannWhitneyJudge",
    "MannWhitneySettings",
    "Observation",
    "Outcome",
    "Sample",
    "SequentialJudge",
    "SequentialSettings",
    "ThresholdJudge",
    "ThresholdSettings",
    "Verdict",
    "judge_names",
    "make_judge",
    "settings_model",
]

DEFAULT_JUDGE = "sequential"


def _threshold(settings: JudgeSettings) -> Judge:
    assert isinstance(settings, ThresholdSettings)
    return ThresholdJudge(settings)


def _mann_whitney(settings: JudgeSettings) -> Judge:
    assert isinstance(settings, MannWhitneySettings)
    return MannWhitneyJudge(settings)


def _sequential(settings: JudgeSettings) -> Judge:
    assert isinstance(settings, SequentialSettings)
    return SequentialJudge(settings)


_REGISTRY: dict[str, tuple[type[JudgeSettings], Callable[[JudgeSettings], Judge]]] = {
    "threshold": (ThresholdSettings, _threshold),
    "mann-whitney": (MannWhitneySettings, _mann_whitney),
    "sequential": (SequentialSettings, _sequential),
}


def judge_names() -> tuple[str, ...]:
    """The names a spec may use, sorted."""
    return tuple(sorted(_REGISTRY))


def settings_model(name: str) -> type[JudgeSettings]:
    """The pydantic model of a judge's settings; ConfigError for an unknown name."""
    return _entry(name)[0]


def make_judge(name: str, settings: Mapping[str, object] | None = None) -> Judge:
    """The named judge built from its settings (defaults for what is left out).

    An unknown name, an unknown setting or a bad value is one ConfigError line.
    """
    model, factory = _entry(name)
    return factory(parse_settings(model, dict(settings or {}), f"judge {name!r}"))


def _entry(name: str) -> tuple[type[JudgeSettings], Callable[[JudgeSettings], Judge]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(judge_names())
        raise ConfigError(f"unknown judge {name!r} (valid: {valid})") from None
