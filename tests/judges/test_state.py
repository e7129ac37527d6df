"""A saved analysis goes on exactly as the one it was saved from, and a saved state is
never a way to run code."""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Iterator

import pytest

from canarist.judges import Observation, Sample, judge_names, make_judge
from canarist.judges.state import StateError, load, save, state_key


def traffic(seed: int, canary_error: list[float]) -> Iterator[Observation]:
    """Quarter seconds of 1,000 requests/s, the canary at 10 % failing `canary_error[0]`
    of its requests (changed as it goes), with every latency."""
    rng = random.Random(seed)
    counts = [0, 0, 0, 0]
    k = 0
    while True:
        k += 1
        counts[0] += 25
        counts[1] += sum(rng.random() < canary_error[0] for _ in range(25))
        counts[2] += 225
        counts[3] += sum(rng.random() < 0.005 for _ in range(225))
        canary = tuple(rng.lognormvariate(4.1, 0.5) for _ in range(25))
        baseline = tuple(rng.lognormvariate(4.1, 0.5) for _ in range(225))
        yield Observation(
            elapsed=k * 0.25,
            canary=Sample(counts[0], counts[1], canary),
            baseline=Sample(counts[2], counts[3], baseline),
            canary_weight=0.1,
        )


@pytest.mark.parametrize("name", judge_names())
def test_a_saved_analysis_goes_on_as_the_one_it_was_saved_from(name: str) -> None:
    """Five minutes in, saved and loaded: the same evidence after gives the same verdicts,
    figures included, as the analysis that was never saved, up to a rollback."""
    canary_error = [0.005]
    stream = traffic(seed=3, canary_error=canary_error)
    analysis = make_judge(name, {}).begin()
    for _ in range(1200):
        verdict = analysis.update(next(stream))
    taken_up, saved_verdict = load(save(analysis, verdict))
    assert saved_verdict == verdict
    canary_error[0] = 0.05
    for _ in range(1200):
        observation = next(stream)
        expected = analysis.update(observation)
        assert taken_up.update(observation) == expected
    assert expected.outcome == "fail"


class _Runs:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (pickle.dumps((_Runs(), None)), "may not name"),
        (pickle.dumps((make_judge("sequential").begin(), random.Random(1))), "may not name"),
        (b"not a pickle", "unreadable"),
        (pickle.dumps(("an analysis?", None)), "not a judge's analysis"),
    ],
)
def test_a_saved_state_that_is_not_a_judges_is_refused(blob: bytes, problem: str) -> None:
    """Only the judges' own classes are built: a state naming any other callable (it would
    run as it is read) is refused, and so is anything that is not an analysis."""
    with pytest.raises(StateError, match=problem):
        load(blob)


def test_a_saved_state_is_tied_to_its_judge_and_settings() -> None:
    """Other settings or another judge: another key, so the state is not taken up."""
    default = state_key("sequential", {})
    assert state_key("sequential", {}) == default
    assert state_key("sequential", {"alpha": 0.05}) != default
    assert state_key("threshold", {}) != default
