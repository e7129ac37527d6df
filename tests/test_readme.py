"""The README's examples are working specs: each one parses and builds its drivers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from canarist.controller.providers import group_drivers
from canarist.domain.spec import parse_spec

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.S)


def test_the_config_reference_parses() -> None:
    """The full reference block is a valid spec."""
    reference = next(b for b in BLOCKS if b.startswith("services:") and "canary_header" in b)
    spec = parse_spec(reference)
    assert spec.services["hello"].analysis.judge == "sequential"


@pytest.mark.parametrize("block", [b for b in BLOCKS if "aws:" in b])
def test_each_aws_example_builds_its_drivers(block: str) -> None:
    """Every AWS example builds a platform and a router (no AWS call is made)."""
    text = block if block.startswith("services:") else "services:\n  hello:\n" + block
    drivers = group_drivers(parse_spec(text))
    assert set(drivers) == {"hello"}
