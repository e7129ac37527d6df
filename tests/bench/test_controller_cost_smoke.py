"""The controller-cost benchmark runs end to end against a real controller and HAProxy."""

from __future__ import annotations

import shutil

import pytest
from bench.controller_cost import main

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.processes,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the haproxy binary"),
]


def test_quick_run_prints_each_count_and_the_cost_of_one_more_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One and two services: a row each, idle (and loaded, with wrk), and the cost each
    service beyond the first adds."""
    assert main(["--quick"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(row[1].endswith("%") and row[2].endswith("%") for row in rows)
    if shutil.which("wrk") is not None:
        assert all(len(row) == 7 and row[6].endswith("x") for row in rows)
    assert "each service beyond the first, idle:" in text
