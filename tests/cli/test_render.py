"""What `status` and `deploy --wait` print for people: every word of the state shows."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from canarist.cli.main import _evidence, _findings, render_status

STABLE = "sha256:" + "a" * 64
CANARY = "sha256:" + "b" * 64


def paused_status() -> dict[str, Any]:
    return {
        "service": "hello",
        "phase": "paused",
        "stable": STABLE,
        "canary": CANARY,
        "weights": {STABLE: 90, CANARY: 10},
        "step": {
            "index": 2,
            "total": 5,
            "kind": "analyze",
            "description": "analyze up to 3s",
            "remaining": None,
        },
        "analysis": {
            "judge": "sequential",
            "verdict": "no_data",
            "reason": "not enough data [0 of 200]",
        },
        "endpoint": "http://127.0.0.1:8080/",
        "instances": [
            {"id": "i1", "release": STABLE, "state": "running"},
            {"id": "i2", "release": CANARY, "state": "running"},
        ],
        "counters": {
            STABLE: {"requests": 12, "failures": 1, "pinned": 4},
            CANARY: {"requests": 30, "failures": 2, "requested": 5, "requested_failures": 1},
        },
    }


def printed(renderable: object) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_status_shows_the_phase_and_the_reason_word_for_word() -> None:
    """Bracketed words are text, not styles: a paused rollout says it is paused."""
    text = printed(render_status(paused_status()))
    assert "hello  [paused]  http://127.0.0.1:8080/" in text
    assert "step 3/5: analyze up to 3s (paused: canarist promote hello to go on)" in text
    assert "no_data — not enough data [0 of 200]" in text
    assert "stable" in text and "canary" in text
    assert "30 (5 by header)" in text and "2 (1 by header)" in text  # the testers' part
    assert "│ 12 (4 pinned) " in text  # what a sticky cookie kept on the release
    assert "by header)" not in text.split("canary")[0]


def test_history_shows_the_figures_behind_the_last_verdict() -> None:
    events = [
        {"kind": "rollout.started", "detail": {}},
        {"kind": "analysis.verdict", "detail": {"verdict": "no_data", "figures": {}}},
        {
            "kind": "analysis.verdict",
            "detail": {
                "verdict": "fail",
                "figures": {
                    "canary_requests": 100,
                    "canary_failures": 6,
                    "canary_p50_ms": 61.5,
                    "canary_p99_ms": 190.0,
                    "baseline_requests": 900,
                    "baseline_failures": 5,
                },
            },
        },
    ]
    assert _evidence(events) == (
        "fail: canary 100 requests, 6 failed (6.00%), p50 61.5 ms p99 190 ms"
        " | baseline 900 requests, 5 failed (0.56%)"
    )
    assert _evidence(events[:2]) == ""
    assert _evidence([]) == ""


def test_history_shows_what_the_old_release_did_after_the_switch_back() -> None:
    summary = "after the switch back, the old release failed 700 of 3600 requests ..."
    events = [
        {"kind": "analysis.verdict", "detail": {"verdict": "fail", "figures": {}}},
        {"kind": "rollback.aftermath", "detail": {"summary": summary, "shared": True}},
    ]
    assert _findings(events) == [summary]
    assert _findings(events[:1]) == []
