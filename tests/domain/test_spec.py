"""The spec parser accepts what users write and refuses the rest in one clear line."""

from __future__ import annotations

import pytest

from canarist.domain.durations import format_duration, parse_duration
from canarist.domain.spec import parse_spec
from canarist.errors import ConfigError, UnknownService


def test_minimal_spec_gets_sensible_defaults() -> None:
    """A service needs only a name: defaults fill in the rest."""
    spec = parse_spec("services:\n  web:\n    listen: 127.0.0.1:9000\n")
    web = spec.service("web")
    assert web.instances == 2
    assert web.listen_address() == ("127.0.0.1", 9000)
    assert web.strategy.kind == "canary"
    assert web.slot_count() >= 2 * web.instances


def test_strategy_as_a_plain_name() -> None:
    """`strategy: blue-green` is shorthand for `{kind: blue-green}`."""
    spec = parse_spec("services:\n  web:\n    strategy: Canary10Percent5Minutes\n")
    assert spec.service("web").strategy.kind == "Canary10Percent5Minutes"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("services: [", "canarist.yaml line"),
        ("web: {}", "expected a mapping with a 'services' mapping"),
        ("services:\n  web:\n    instances: 0\n", "services.web.instances"),
        ("services:\n  web:\n    listen: nowhere\n", "HOST:PORT"),
        ("services:\n  web:\n    strategy: yolo\n", "unknown strategy 'yolo'"),
        ("services:\n  web:\n    colour: blue\n", "services.web.colour"),
        ("services:\n  Web!:\n    {}\n", "service name"),
        ("services:\n  web:\n    health: {path: healthz}\n", "must start with '/'"),
        ("services:\n  web:\n    drain_timeout: soon\n", "services.web.drain_timeout: not a"),
        ("services:\n  web:\n    stop_grace: -1\n", "services.web.stop_grace: a duration cannot"),
        ("services:\n  web:\n    health: {interval: 0s}\n", "services.web.health.interval"),
        ("services:\n  web:\n    health: {timeout: 0}\n", "services.web.health.timeout"),
        (
            "services:\n  web:\n    strategy: {steps: [{analyze: 0s}]}\n",
            "services.web.strategy.steps.0.analyze: Input should be greater than 0",
        ),
        (
            "services:\n  web:\n    strategy: {kind: linear, step_interval: 0}\n",
            "services.web.strategy.step_interval",
        ),
        (
            "services:\n  a:\n    listen: 127.0.0.1:1\n  b:\n    listen: 127.0.0.1:1\n",
            "both listen",
        ),
        (
            "services:\n  web:\n    strategy: {steps: [{set_weight: 5, pause: 3}]}\n",
            "one of",
        ),
        (
            "services:\n  web: {}\n  web_pinned:\n    listen: 127.0.0.1:9001\n",
            "service 'web_pinned': the name of 'web' followed by '_pinned' is taken",
        ),
        (
            "services:\n  web_canary:\n    listen: 127.0.0.1:9001\n  web: {}\n",
            "service 'web_canary': the name of 'web' followed by '_canary' is taken",
        ),
    ],
)
def test_malformed_specs_are_one_clear_line(text: str, fragment: str) -> None:
    """Every malformed spec raises ConfigError with one line naming the problem."""
    with pytest.raises(ConfigError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "services:\n  web:\n    analysis: {judge: coin-flip}\n",
            "services.web.analysis: unknown judge 'coin-flip'"
            " (valid: mann-whitney, none, sequential, threshold)",
        ),
        (
            "services:\n  web:\n    analysis: {settings: {alpha: 2}}\n",
            "services.web.analysis: judge 'sequential': alpha:",
        ),
        (
            "services:\n  web:\n    analysis: {judge: threshold, settings: {interval: soon}}\n",
            "services.web.analysis: judge 'threshold': interval: not a duration: 'soon'",
        ),
        ("services:\n  web:\n    analysis: {no_data: shrug}\n", "services.web.analysis.no_data"),
        (
            "services:\n  web:\n    analysis: {judge: none, settings: {alpha: 0.05}}\n",
            "services.web.analysis: judge 'none' takes no settings",
        ),
    ],
)
def test_malformed_analysis_is_refused(text: str, fragment: str) -> None:
    """A bad judge name or setting is caught when the spec is read, not mid-rollout, in one
    line that names the service and the setting."""
    with pytest.raises(ConfigError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_analysis_defaults_to_the_sequential_judge_in_the_background() -> None:
    """With nothing said, every rollout is watched by the sequential judge."""
    analysis = parse_spec("services:\n  web: {}\n").service("web").analysis
    assert (analysis.judge, analysis.background, analysis.no_data) == ("sequential", True, "wait")


def test_unknown_service_lists_the_declared_ones() -> None:
    """Asking for an undeclared service names the ones that exist."""
    spec = parse_spec("services:\n  web:\n    {}\n  api:\n    listen: 127.0.0.1:9001\n")
    with pytest.raises(UnknownService, match="declared: api, web"):
        spec.service("db")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    """Durations accept numbers and unit suffixes."""
    assert parse_duration(value) == seconds


def test_duration_formatting() -> None:
    """Short human forms."""
    assert [format_duration(s) for s in (0.25, 45, 300, 90)] == ["250ms", "45s", "5m", "1m30s"]
