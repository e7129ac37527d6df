"""The HAProxy request log parser, on lines captured from HAProxy 2.6 (`option httplog`)."""

from __future__ import annotations

import pytest

from canarist.metrics.haproxy import MalformedLog, RequestLog, parse_request_log

SYSLOG = "<134>Nov 27 13:51:16 haproxy[23103]: "


def parse(line: str) -> RequestLog:
    entry = parse_request_log(line)
    assert entry is not None
    return entry


def test_a_plain_200_in_raw_format() -> None:
    """Backend, server, status, timers and termination state are read."""
    entry = parse(
        "127.0.0.1:34170 [27/Nov/2026:13:51:22.002] fe_web be_web/s0 0/0/0/1/1 200 51 - - ----"
        ' 1/1/0/0/0 0/0 "GET / HTTP/1.1"\n'
    )
    assert entry == RequestLog("be_web", "s0", 200, "----", 1, 1, 0, False)
    assert not entry.failed


def test_a_syslog_framed_line() -> None:
    """The RFC 3164 header HAProxy puts in front by default is skipped."""
    entry = parse(
        SYSLOG + "127.0.0.1:48922 [27/Nov/2026:13:51:16.595] fe_web be_web/s0 0/0/0/502/502 200"
        ' 51 - - ---- 1/1/0/0/0 0/0 "GET /slow HTTP/1.1"\n'
    )
    assert (entry.server, entry.response_ms, entry.active_ms) == ("s0", 502, 502)


def test_an_app_500_is_a_failure() -> None:
    """A 5xx from the app fails, though the exchange itself went well."""
    entry = parse(
        SYSLOG + "127.0.0.1:48922 [27/Nov/2026:13:51:16.594] fe_web be_web/s1 0/0/0/0/0 500 70"
        ' - - ---- 1/1/0/0/0 0/0 "GET /fail HTTP/1.1"\n'
    )
    assert entry.status == 500 and entry.failed


def test_a_redispatched_request() -> None:
    """A '+' before the retry count marks a request redispatched to another server."""
    entry = parse(
        "127.0.0.1:34170 [27/Nov/2026:13:51:22.518] fe_web be_web/s0 0/0/0/2/2 200 51 - - ----"
        ' 1/1/0/0/+1 0/0 "GET /k HTTP/1.1"\n'
    )
    assert entry.retries == 1 and entry.redispatched and not entry.failed


@pytest.mark.parametrize(
    ("line", "status", "termination"),
    [
        # The server did not answer in time: HAProxy answered 504.
        (
            "127.0.0.1:59930 [27/Nov/2026:13:51:53.437] f b_slow/s0 0/0/0/-1/303 504 198 - - sH--"
            ' 1/1/0/0/0 0/0 "GET /slow HTTP/1.1"',
            504,
            "sH--",
        ),
        # The server answered garbage, three retries too: HAProxy answered 502.
        (
            "127.0.0.1:59944 [27/Nov/2026:13:51:53.742] f b_junk/s0 0/1/1/-1/2 502 209 - - PH--"
            ' 1/1/0/0/3 0/0 "GET /junk HTTP/1.1"',
            502,
            "PH--",
        ),
        # The server closed before answering.
        (
            "127.0.0.1:59950 [27/Nov/2026:13:51:53.799] f b_empty/s0 0/153/1/-1/205 502 209 - -"
            ' SH-- 1/1/0/0/3 0/0 "GET /empty HTTP/1.1"',
            502,
            "SH--",
        ),
        # The server cut its body short: the client saw a 200, and a broken response.
        (
            "127.0.0.1:59946 [27/Nov/2026:13:51:53.747] f b_partial/s0 0/0/0/0/51 200 56 - - SD--"
            ' 1/1/0/0/0 0/0 "GET /partial HTTP/1.1"',
            200,
            "SD--",
        ),
        # Nothing listened: connection refused on every retry, HAProxy answered 503.
        (
            "127.0.0.1:59976 [27/Nov/2026:13:51:54.007] f b_dead/s0 0/3006/-1/-1/3006 503 217 - -"
            ' SC-- 1/1/0/0/3 0/0 "GET /dead HTTP/1.1"',
            503,
            "SC--",
        ),
    ],
)
def test_server_errors_and_timeouts_are_failures(line: str, status: int, termination: str) -> None:
    """Timeouts, refused connections and broken answers count as failures."""
    entry = parse(line)
    assert (entry.status, entry.termination) == (status, termination)
    assert entry.failed


def test_no_server_picked() -> None:
    """A request no server took has no server; HAProxy's 503 for it is a failure."""
    entry = parse(
        SYSLOG + "127.0.0.1:43894 [27/Nov/2026:13:55:59.400] f f/<NOSRV> -1/-1/-1/-1/0 503 217"
        ' - - SC-- 2/2/0/0/0 0/0 "GET /nothing/here?q=1 HTTP/1.1"\n'
    )
    assert entry.server is None and entry.backend == "f"
    assert entry.response_ms == -1 and entry.failed


def test_a_bad_request_is_the_clients_doing() -> None:
    """A request HAProxy refused as malformed (PR, 400) is not a failure of any release."""
    entry = parse(
        SYSLOG + "127.0.0.1:43908 [27/Nov/2026:13:55:59.401] f f/<NOSRV> -1/-1/-1/-1/0 400 0"
        ' - - PR-- 2/2/0/0/0 0/0 "<BADREQ>"\n'
    )
    assert entry.status == 400 and not entry.failed


def test_a_line_cut_at_the_length_limit_still_parses() -> None:
    """Only the fields before the request line are needed."""
    entry = parse(
        "127.0.0.1:34170 [27/Nov/2026:13:51:22.002] fe_web be_web_canary/s12 0/0/0/7/9 200 51"
        ' - - ---- 1/1/0/0/0 0/0 "GET /a-very-long-pa'
    )
    assert (entry.backend, entry.server, entry.active_ms) == ("be_web_canary", "s12", 9)


@pytest.mark.parametrize(
    "line",
    [
        "Server be_web/s0 is UP/READY (leaving forced maintenance).\n",
        "<133>Nov 27 13:51:16 haproxy[23103]: Server be_web/s1 is UP/READY (leaving forced"
        " maintenance).\n",
        "",
    ],
)
def test_lines_that_are_not_request_logs(line: str) -> None:
    """Server state changes and the like are not requests, and not errors either."""
    assert parse_request_log(line) is None


def test_a_mangled_request_log_is_malformed() -> None:
    """A line with a request log's start but unreadable fields raises MalformedLog."""
    with pytest.raises(MalformedLog):
        parse_request_log(
            "127.0.0.1:34170 [27/Nov/2026:13:51:22.002] fe_web be_web/s0 0/0/x/1/1 200 51 - -"
        )
