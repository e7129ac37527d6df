"""Sticky sessions under real traffic: requests a cookie pins are no evidence against a release."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from canarist.demo.load import Load
from canarist.demo.sample import write_app
from tests.e2e.harness import Canarist, project_up

pytestmark = [pytest.mark.e2e, pytest.mark.haproxy, pytest.mark.processes]

SPEC = """\
services:
  web:
    listen: 127.0.0.1:{port}
    instances: 2
    sticky: true
    health:
      interval: 0.5s
    strategy:
      kind: canary
      steps:
        - set_weight: 10
        - analyze: 15s
        - set_weight: 50
        - analyze: 15s
      scale_down_delay: 2s
    drain_timeout: 5s
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """A sticky service on v1; a healthy v2 (both fail 0.5 % of requests) to deploy."""
    root: Path = tmp_path_factory.mktemp("sticky")
    apps = {v: write_app(root / f"v{v}", version=v, error_rate=0.005) for v in ("1", "2")}
    with project_up(root, SPEC, apps, first="1") as up:
        yield up


def test_a_client_failing_everywhere_pinned_to_the_canary_does_not_roll_it_back(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """Under steady load from clients that keep no cookies (split by weight), one client
    keeps asking for a page that is broken in every release, 20 times a second, and its
    cookie pins it to the canary. Its failures went through HAProxy's pinned backend and
    are left out of the comparison: the healthy canary is promoted (exit 0). Counted as
    the split's, they rolled it back after the client's 11th request (measured once)."""
    cli, refs = project
    load = Load(cli.url, rate=300.0, connections=12).start()
    try:
        time.sleep(1.0)
        deploy = subprocess.Popen(
            [sys.executable, "-m", "canarist", "deploy", "web", refs["2"], "--wait"],
            cwd=cli.root,
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        cli.wait_for(
            lambda s: s["canary"] == refs["2"] and s["weights"].get(refs["2"], 0) > 0,
            what="the canary taking traffic",
        )
        answered = Counter[str]()
        connection = http.client.HTTPConnection("127.0.0.1", cli.port, timeout=5)
        # Pinned the way a tester's browser would be: one request with the canary header,
        # then the cookie HAProxy set on it.
        connection.request("GET", "/broken", headers={"X-Canarist-Canary": "1"})
        first = connection.getresponse()
        first.read()
        cookie = first.getheader("Set-Cookie", "").split(";")[0]
        assert cookie.startswith("canarist_web="), first.getheaders()
        while deploy.poll() is None:
            connection.request("GET", "/broken", headers={"Cookie": cookie})
            response = connection.getresponse()
            response.read()
            answered[f"{response.status} v{response.getheader('X-App-Version')}"] += 1
            time.sleep(0.05)
        out, err = deploy.communicate()
    finally:
        load.stop()
    print(f"sticky: the pinned client got {dict(answered)}; {out.splitlines()[-1]}")
    assert deploy.returncode == 0, out + err
    assert answered["500 v2"] >= 100 and set(answered) == {"500 v2"}, answered
    assert cli.status()["stable"] == refs["2"]
