"""The HAProxy router's pure parts: weights, slots, command plans, config text, shape hash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import pytest

from canarist.errors import ConfigError, RouterError
from canarist.routers.base import Member, RouteTable, ServiceRoute
from canarist.routers.haproxy import (
    Layout,
    SlotState,
    assign_slots,
    desired_layout,
    plan_commands,
    render_config,
    server_weights,
    shape_hash,
    validate_services,
    validate_table,
)
from canarist.routers.haproxy_runtime import ServerState, parse_servers_state

WEB = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz")


def members(**counts: int) -> list[Member]:
    """`members(A=2, B=1)`: active members a0, a1 of A and b0 of B on distinct ports."""
    out = []
    port = 9000
    for release, n in counts.items():
        for i in range(n):
            out.append(Member(f"{release.lower()}{i}", release, "127.0.0.1", port))
            port += 1
    return out


def shares(ms: Sequence[Member], weights: Mapping[str, int]) -> dict[str, Fraction]:
    """Each release's share of traffic under the given per-instance weights."""
    total = sum(weights.values())
    out: dict[str, Fraction] = {}
    for m in ms:
        out[m.release] = out.get(m.release, Fraction(0)) + Fraction(weights[m.instance_id], total)
    return out


def live(
    backend: str, slots: Mapping[int, tuple[str, int, int, str]], size: int = 4
) -> dict[int, ServerState]:
    """Live slots as `show servers state` would report them; unlisted slots are parked."""
    admin = {"ready": 4, "drain": 12, "maint": 5}
    out = {}
    for k in range(size):
        addr, port, weight, state = slots.get(k, ("127.0.0.1", 1, 0, "maint"))
        out[k] = ServerState(backend, f"s{k}", addr, port, 2, admin[state], weight, 2)
    return out


@pytest.mark.parametrize(
    ("counts", "percents"),
    [
        ({"A": 2, "B": 2}, {"A": 10, "B": 90}),
        ({"A": 1, "B": 1}, {"A": 1, "B": 99}),
        ({"A": 1, "B": 3}, {"A": 33, "B": 67}),
        ({"A": 3, "B": 2}, {"A": 50, "B": 50}),
        ({"A": 1, "B": 1, "C": 1}, {"A": 20, "B": 30, "C": 50}),
    ],
)
def test_weights_reproduce_percents_exactly_when_integers_allow(
    counts: dict[str, int], percents: dict[str, int]
) -> None:
    """Common splits come out exact, with every weight within 1..256."""
    ms = members(**counts)
    weights = server_weights(ms, percents)
    assert all(1 <= w <= 256 for w in weights.values())
    assert shares(ms, weights) == {r: Fraction(p, 100) for r, p in percents.items()}


def test_weights_are_even_within_a_release() -> None:
    """A release's share is split evenly among its active servers."""
    ms = members(A=2, B=2)
    weights = server_weights(ms, {"A": 10, "B": 90})
    assert weights == {"a0": 1, "a1": 1, "b0": 9, "b1": 9}


def test_weights_keep_a_small_share_alive() -> None:
    """1 percent over three servers still gives each weight 1: as close as 256 allows."""
    ms = members(A=3, B=1)
    weights = server_weights(ms, {"A": 1, "B": 99})
    assert weights == {"a0": 1, "a1": 1, "a2": 1, "b0": 256}
    assert shares(ms, weights)["A"] == Fraction(3, 259)


def test_zero_percent_and_draining_members_get_weight_zero() -> None:
    """0 percent, a release absent from the table, and draining members get no traffic."""
    ms = [
        *members(A=1, B=1, C=1),
        Member("b9", "B", "127.0.0.1", 9100, "draining"),
    ]
    weights = server_weights(ms, {"A": 0, "B": 100})
    assert weights == {"a0": 0, "b0": 1, "c0": 0, "b9": 0}


def test_weights_are_relative_among_releases_with_members() -> None:
    """A release with no active member leaves its share to the others."""
    assert server_weights(members(A=1), {"A": 10, "B": 90}) == {"a0": 1}
    assert server_weights([], {"A": 100}) == {}


def test_shape_hash_ignores_order_and_follows_shape() -> None:
    """The hash changes with the shape, not with the order services are listed in."""
    api = ServiceRoute("api", "127.0.0.1", 8081, 2, "/health")
    assert shape_hash([WEB, api]) == shape_hash([api, WEB])
    assert shape_hash([WEB]) != shape_hash([WEB, api])
    for changed in (
        ServiceRoute("web", "127.0.0.1", 8080, 5, "/healthz"),
        ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz", sticky=True),
        ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz", canary_header=None),
        ServiceRoute("web", "127.0.0.1", 8090, 4, "/healthz"),
    ):
        assert shape_hash([changed]) != shape_hash([WEB])
    assert shape_hash([WEB], log_target="/dev/log") != shape_hash([WEB])


def render(*services: ServiceRoute, layouts: Mapping[str, Layout] | None = None) -> str:
    return render_config(
        services, layouts or {}, socket="/run/c/admin.sock", pidfile="/run/c/haproxy.pid"
    )


def test_config_globals_and_defaults() -> None:
    """The admin socket passes listeners on; retries never cover a 5xx."""
    text = render(WEB)
    assert text.startswith(f"# canarist shape {shape_hash([WEB])}\n")
    assert "stats socket /run/c/admin.sock mode 600 level admin expose-fd listeners" in text
    assert "pidfile /run/c/haproxy.pid" in text
    for line in (
        "mode http",
        "timeout connect 2s",
        "timeout client 30s",
        "timeout server 30s",
        "option http-keep-alive",
        "retries 3",
        "option redispatch 1",
        "retry-on conn-failure empty-response junk-response",
    ):
        assert f"\n    {line}\n" in text
    assert "5xx" not in text and "response-timeout" not in text


def test_config_declares_every_slot_parked_until_assigned() -> None:
    """Unassigned slots are declared disabled at a dummy address, all checked."""
    text = render(WEB)
    assert "frontend fe_web\n    bind 127.0.0.1:8080\n" in text
    assert (
        "    use_backend be_web_canary if { req.hdr(X-Canarist-Canary) -m found }"
        " { nbsrv(be_web_canary) gt 0 }\n    default_backend be_web\n"
    ) in text
    for backend in ("be_web", "be_web_canary"):
        block = text.split(f"\nbackend {backend}\n")[1].split("\n\n")[0]
        assert "balance roundrobin" in block
        assert "option httpchk GET /healthz" in block
        assert "default-server inter 1s fall 2 rise 1" in block
        assert [line.strip() for line in block.splitlines() if "server s" in line] == [
            f"server s{k} 127.0.0.1:1 weight 0 check disabled" for k in range(4)
        ]
    assert "cookie" not in text


def test_config_bakes_in_states_weights_and_cookies() -> None:
    """Assigned slots carry address and weight; drain renders as weight 0; sticky adds
    cookies."""
    sticky = ServiceRoute("web", "127.0.0.1", 8080, 3, "/healthz", sticky=True)
    layout = Layout(
        main={
            0: SlotState("127.0.0.1", 9000, 7, "ready"),
            2: SlotState("127.0.0.1", 9002, 5, "drain"),
        },
        canary={0: SlotState("127.0.0.1", 9000, 0, "maint")},
    )
    text = render(sticky, layouts={"web": layout})
    main = text.split("\nbackend be_web\n")[1].split("\n\n")[0]
    assert "cookie canarist_web insert indirect nocache" in main
    assert [line.strip() for line in main.splitlines() if "server s" in line] == [
        "server s0 127.0.0.1:9000 weight 7 cookie s0 check",
        "server s1 127.0.0.1:1 weight 0 cookie s1 check disabled",
        "server s2 127.0.0.1:9002 weight 0 cookie s2 check",
    ]
    canary = text.split("\nbackend be_web_canary\n")[1]
    assert "server s0 127.0.0.1:9000 weight 0 cookie s0 check disabled" in canary


def test_a_sticky_service_sends_requests_with_its_cookie_to_a_pinned_backend() -> None:
    """Requests carrying the sticky cookie go to a backend of their own, after the canary
    header's rule and before the split: the same servers in the same states as the main
    backend, honouring the cookie, never logged (no latency of theirs is a sample)."""
    sticky = ServiceRoute("web", "127.0.0.1", 8080, 2, "/healthz", sticky=True)
    layout = Layout(main={0: SlotState("127.0.0.1", 9000, 7, "ready")})
    text = render_config(
        [sticky],
        {"web": layout},
        socket="/run/c/admin.sock",
        pidfile="/run/c/haproxy.pid",
        log_target="/run/c/logs.sock format raw",
    )
    frontend = text.split("\nfrontend fe_web\n")[1].split("\n\n")[0].splitlines()
    rules = [line.split()[1] for line in frontend if "_backend" in line]
    assert rules == ["be_web_canary", "be_web_pinned", "be_web"]
    assert "use_backend be_web_pinned if { req.cook(canarist_web) -m found }" in frontend[2]
    pinned = text.split("\nbackend be_web_pinned\n")[1].split("\n\n")[0]
    main = text.split("\nbackend be_web\n")[1].split("\n\n")[0]
    servers = [line for line in main.splitlines() if "server s" in line]
    assert servers == [line for line in pinned.splitlines() if "server s" in line]
    assert "cookie canarist_web insert indirect nocache" in pinned
    assert "    http-response set-log-level silent" in pinned.splitlines()
    assert "be_web_pinned" not in render(WEB)


def test_services_whose_backends_would_clash_are_config_errors() -> None:
    """A service named like another's canary or pinned backend is refused."""
    for clash in ("web_canary", "web_pinned"):
        other = ServiceRoute(clash, "127.0.0.1", 8081, 2, "/h")
        with pytest.raises(ConfigError, match="rename one of them"):
            validate_services([WEB, other])


def test_config_without_canary_header_has_no_canary_backend() -> None:
    """No header, no canary backend and no use_backend rule."""
    text = render(ServiceRoute("web", "127.0.0.1", 8080, 2, "/h", canary_header=None))
    assert "canary" not in text


def test_config_can_send_logs() -> None:
    """A log target adds the global log line and HTTP logs."""
    text = render_config([WEB], {}, socket="/s", pidfile="/p", log_target="/dev/log")
    assert "    log /dev/log local0\n" in text and "    option httplog\n" in text
    assert "set-log-level" not in text


def test_config_can_log_a_share_of_each_slots_requests_from_a_map() -> None:
    """With a log shares directory, the requests each slot of the main backend answers
    are logged with the probability its entry in the service's map gives, per mille (all
    of them without an entry); the testers' canary backend is left alone."""
    text = render_config(
        [WEB], {}, socket="/s", pidfile="/p", log_target="/dev/log", log_shares="/d"
    )
    main = text.split("\nbackend be_web\n")[1].split("\nbackend be_web_canary\n")[0]
    assert (
        "    http-response set-var(txn.log_share) srv_name,map_str_int(/d/web.map,1000)\n"
        "    http-response set-log-level silent if { rand(1000),sub(txn.log_share) -m int ge 0 }\n"
    ) in main
    assert text.count("set-log-level") == 1
    assert "map_str_int" not in render_config([WEB], {}, socket="/s", pidfile="/p")


@pytest.mark.parametrize(
    "bad",
    [
        ServiceRoute("my web", "127.0.0.1", 8080, 2, "/h"),
        ServiceRoute("web", "127.0.0.1", 0, 2, "/h"),
        ServiceRoute("web", "127.0.0.1", 8080, 0, "/h"),
        ServiceRoute("web", "127.0.0.1", 8080, 2, "healthz"),
        ServiceRoute("web", "127.0.0.1", 8080, 2, "/h#x"),
        ServiceRoute("web", "127.0.0.1", 8080, 2, "/h", canary_header="X Canary"),
    ],
)
def test_services_haproxy_cannot_carry_are_config_errors(bad: ServiceRoute) -> None:
    """Names, ports, slots, paths and headers that would break the config are refused."""
    with pytest.raises(ConfigError):
        validate_services([bad])


def test_duplicate_services_are_config_errors() -> None:
    """Two services with one name or one listen address are refused."""
    with pytest.raises(ConfigError):
        validate_services([WEB, WEB])
    with pytest.raises(ConfigError):
        validate_services([WEB, ServiceRoute("api", "127.0.0.1", 8080, 2, "/h")])


def test_tables_haproxy_cannot_carry_are_router_errors() -> None:
    """More members than slots, duplicates, host names and bad percents are refused."""
    ms = members(A=5)
    for table in (
        RouteTable(tuple(ms), {"A": 100}),
        RouteTable((ms[0], ms[0]), {"A": 100}),
        RouteTable((Member("x", "A", "localhost", 9000),), {"A": 100}),
        RouteTable((ms[0],), {"A": 101}),
    ):
        with pytest.raises(RouterError):
            validate_table(WEB, table)


def test_members_keep_their_slots_and_new_ones_take_parked_slots() -> None:
    """Assignment follows live addresses; newcomers prefer slots in maintenance."""
    a0, a1, b0 = members(A=2, B=1)
    now = live("be_web", {1: ("127.0.0.1", a0.port, 1, "ready"), 2: ("127.0.0.1", 7, 1, "ready")})

    assert assign_slots([b0, a0, a1], now, 4) == {"a0": 1, "b0": 0, "a1": 3}


def test_a_member_returning_to_its_parked_slot_gets_it_back() -> None:
    """A slot in maintenance still pointing at a member is that member's slot."""
    (a0,) = members(A=1)
    now = live("be_web", {2: ("127.0.0.1", a0.port, 0, "maint")})
    assert assign_slots([a0], now, 4) == {"a0": 2}


def test_no_free_slot_is_a_router_error() -> None:
    """More newcomers than free slots cannot be placed."""
    ms = members(A=3)
    now = live("be_web", {}, size=2)
    with pytest.raises(RouterError):
        assign_slots(ms, now, 2)


def test_plan_is_empty_when_live_matches() -> None:
    """Nothing is sent when HAProxy already routes the table."""
    a0, b0 = members(A=1, B=1)
    table = RouteTable((a0, b0), {"A": 50, "B": 50}, canary="B")
    assignment = {"a0": 0, "b0": 1}
    main = live(
        "be_web", {0: ("127.0.0.1", a0.port, 1, "ready"), 1: ("127.0.0.1", b0.port, 1, "ready")}
    )
    canary = live(
        "be_web_canary",
        {0: ("127.0.0.1", a0.port, 0, "maint"), 1: ("127.0.0.1", b0.port, 1, "ready")},
    )
    assert plan_commands("web", desired_layout(WEB, table, assignment), main, canary) == []


def test_plan_adds_capacity_before_taking_any_away() -> None:
    """New servers and higher weights go first; lower weights, drain and maint last."""
    (a0, a1, b0, b1) = members(A=2, B=2)
    table = RouteTable(
        (Member("a0", "A", a0.host, a0.port, "draining"), b0, b1), {"A": 0, "B": 100}
    )
    main = live(
        "be_web",
        {
            0: ("127.0.0.1", a0.port, 1, "ready"),
            1: ("127.0.0.1", a1.port, 1, "ready"),
            2: ("127.0.0.1", b0.port, 0, "ready"),
        },
    )
    canary = live("be_web_canary", {})
    assignment = assign_slots(table.members, main, 4)
    assert assignment == {"a0": 0, "b0": 2, "b1": 3}

    commands = plan_commands("web", desired_layout(WEB, table, assignment), main, canary)

    assert commands == [
        "set server be_web/s2 weight 1",
        f"set server be_web/s3 addr 127.0.0.1 port {b1.port}",
        "set server be_web/s3 weight 1",
        "set server be_web/s3 state ready",
        "set server be_web/s0 weight 0",
        "set server be_web/s0 state drain",
        "set server be_web/s1 state maint",
        f"set server be_web_canary/s0 addr 127.0.0.1 port {a0.port}",
        f"set server be_web_canary/s2 addr 127.0.0.1 port {b0.port}",
        f"set server be_web_canary/s3 addr 127.0.0.1 port {b1.port}",
    ]


def test_plan_puts_only_the_canary_in_the_canary_backend() -> None:
    """Canary members are ready in the canary backend at weight 1, even at 0 percent."""
    a0, b0 = members(A=1, B=1)
    table = RouteTable((a0, b0), {"A": 100, "B": 0}, canary="B")
    layout = desired_layout(WEB, table, {"a0": 0, "b0": 1})
    assert layout.main == {
        0: SlotState("127.0.0.1", a0.port, 1, "ready"),
        1: SlotState("127.0.0.1", b0.port, 0, "ready"),
    }
    assert layout.canary == {
        0: SlotState("127.0.0.1", a0.port, 0, "maint"),
        1: SlotState("127.0.0.1", b0.port, 1, "ready"),
    }


def test_plan_refuses_a_backend_of_an_older_shape() -> None:
    """A slot HAProxy does not have means ensure was not run for this shape."""
    (a0,) = members(A=1)
    layout = desired_layout(WEB, RouteTable((a0,), {"A": 100}), {"a0": 3})
    with pytest.raises(RouterError):
        plan_commands("web", layout, live("be_web", {}, size=2), live("be_web_canary", {}))


def test_parse_servers_state() -> None:
    """`show servers state` rows become ServerStates with maint and drain read from bits."""
    reply = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
        " srv_iweight srv_time_since_last_change srv_check_status srv_check_result"
        " srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id"
        " srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr"
        " srv_agent_addr srv_agent_port\n"
        "3 be_web 1 s0 127.0.0.1 2 4 5 0 0 1 0 1 6 0 0 0 - 18102 - 0 0 - - 0\n"
        "3 be_web 2 s1 127.0.0.1 2 12 5 0 0 15 3 2 6 0 0 0 - 18103 - 0 0 - - 0\n"
        "3 be_web 3 s2 127.0.0.1 0 5 0 0 9 1 0 0 14 0 0 0 - 1 - 0 0 - - 0\n\n"
    )
    s0, s1, s2 = parse_servers_state(reply)
    assert (s0.name, s0.port, s0.weight, s0.admin) == ("s0", 18102, 5, "ready")
    assert s1.admin == "drain" and s1.draining
    assert s2.admin == "maint" and s2.in_maint and s2.op_state == 0
