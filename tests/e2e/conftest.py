"""A real canarist project for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canarist.demo.sample import write_app
from tests.e2e.harness import SPEC, Canarist, project_up


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """A project with the sample app built in three versions and the controller up."""
    root = tmp_path_factory.mktemp("project")
    versions = ("1", "2", "3")
    apps = {v: write_app(root / f"app{v}", version=v) for v in versions}
    with project_up(root, SPEC, apps, labels={v: f"v{v}" for v in versions}) as up:
        yield up
