"""The sticky-sessions benchmark runs end to end and prints both policies side by side."""

from __future__ import annotations

import pytest
from bench.sticky import main


def test_quick_run_prints_the_price_and_the_saving(capsys: pytest.CaptureFixture[str]) -> None:
    """Both tables, each row with both policies: leaving the pinned requests out never
    rolls the healthy canary back for the pinned client, judging them always does."""
    assert main(["--quick"]) == 0
    text = capsys.readouterr().out
    bad, healthy = text.split("## a healthy canary")
    rows = [line.split() for line in bad.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 6 and all(row[-1].endswith("x") for row in rows)
    shares = [line.split() for line in healthy.splitlines() if line.strip()[:1].isdigit()]
    assert [row[1:] for row in shares] == [["0.0%", "100.0%"], ["0.0%", "100.0%"]]
