"""The resume benchmark runs end to end and prints both ways of taking an analysis up."""

from __future__ import annotations

import pytest
from bench.resume import main


def test_quick_run_prints_both_ways_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """Two minutes of analysis: the database, the rows kept and the take-up time, with
    the state saved and with every row replayed, and their ratio."""
    assert main(["--quick"]) == 0
    text = capsys.readouterr().out
    assert "state saved every 300 s (canarist)" in text
    assert "every row kept and replayed" in text
    assert "ratio (saved / replayed): database" in text
