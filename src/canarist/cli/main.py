"""`canarist`: build releases and roll them out. Exit codes follow the contract:
0 ok (promoted), 1 error, 2 bad input (nothing changed), 3 rolled back, 4 aborted."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from canarist.errors import BadInput, CanaristError
from canarist.home import SPEC_NAME, Home

app = typer.Typer(
    help="Immutable releases and progressive delivery on your own machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Path to canarist.yaml (default: ./canarist.yaml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr and the exit code."""
    err.print(f"canarist: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def handled() -> Iterator[None]:
    """Map canarist's errors to the contract's exit codes."""
    try:
        yield
    except BadInput as exc:
        fail(f"error: {exc}", 2)
    except CanaristError as exc:
        fail(f"error: {exc}", 1)


def _client(config: Path | None) -> Any:
    from canarist.cli.client import ControllerClient

    return ControllerClient(Home.locate(config))


def _hex(ref: str | None) -> str:
    """The first 12 hex digits of a reference: enough to tell releases apart in a table."""
    return "-" if not ref else ref.removeprefix("sha256:")[:12]


def short(ref: str | None) -> str:
    """sha256:abcdef012345 form of a reference."""
    return "-" if not ref else ref[:19]


# -- releases --------------------------------------------------------------------------


@app.command()
def build(
    app_dir: Annotated[Path, typer.Argument(help="The app directory (with pyproject.toml).")],
    label: Annotated[str | None, typer.Option(help="A name to find the release by.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Build a release; prints its reference (sha256:...) on the last line."""
    from canarist.releases.build import build_release
    from canarist.releases.store import LocalArtifactStore

    with handled():
        home = Home.for_artifacts(config)
        store = LocalArtifactStore(home.artifacts, venv_root=home.venvs)
        started = time.monotonic()
        ref = build_release(app_dir, store, label)
        err.print(f"built {short(ref)} in {time.monotonic() - started:.1f}s", highlight=False)
    print(ref)


@app.command()
def releases(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the releases in the artifact store, newest first."""
    from canarist.releases.store import LocalArtifactStore

    with handled():
        home = Home.for_artifacts(config)
        items = LocalArtifactStore(home.artifacts, venv_root=home.venvs).list()
    if as_json:
        print(json.dumps([_release_json(r) for r in items], indent=2))
        return
    table = Table("release", "labels", "created", "size", "command")
    for r in items:
        data = _release_json(r)
        table.add_row(
            short(data["ref"]),
            ", ".join(data["labels"]),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["created"])),
            f"{data['size'] / 1024:.0f} KiB",
            " ".join(data["command"]),
        )
    out.print(table)


def _release_json(release: Any) -> dict[str, Any]:
    return {
        "ref": release.ref,
        "labels": list(release.labels),
        "created": release.created,
        "size": release.size,
        "command": list(release.command),
        "health": release.health,
    }


@app.command()
def push(
    release: Annotated[str, typer.Argument(help="sha256:..., a unique prefix, or a label.")],
    bucket: Annotated[str, typer.Option(help="The S3 bucket of the artifact store.")],
    prefix: Annotated[str, typer.Option(help="Key prefix in the bucket.")] = "releases",
    region: Annotated[str | None, typer.Option(help="AWS region.")] = None,
    lambda_zip: Annotated[
        bool, typer.Option("--lambda", help="Also upload its Lambda deployment package.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Upload a release to the S3 artifact store (AWS platforms fetch it by digest)."""
    from canarist.releases.s3 import push_release

    with handled():
        home = Home.for_artifacts(config)
        pushed, ref = push_release(
            home.artifacts, home.venvs, release, bucket, prefix, region, lambda_zip
        )
    out.print(f"{'pushed' if pushed else 'already in'} s3://{bucket}/{prefix}: {short(ref)}")


# -- controller ------------------------------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the spec and the app.")] = Path(
        "."
    ),
    port: Annotated[int, typer.Option(help="Public port of the sample service.")] = 8080,
) -> None:
    """Write a working canarist.yaml and a sample app (./app)."""
    from canarist.demo.sample import write_app, write_spec

    spec = directory / SPEC_NAME
    if spec.exists():
        fail(f"error: {spec} exists; not overwriting it", 2)
    directory.mkdir(parents=True, exist_ok=True)
    write_spec(spec, port)
    write_app(directory / "app")
    out.print(f"wrote {spec} and {directory / 'app'}/")
    out.print("next: canarist up && canarist build app && canarist deploy hello <ref> --wait")


@app.command()
def up(config: ConfigOpt = None) -> None:
    """Start the controller, HAProxy and the instances in the background."""
    from canarist.controller import daemon

    with handled():
        home = Home.locate(config)
        pid = daemon.running_pid(home)
        if pid is not None:
            _client(config).reload()
            out.print(f"controller already running (pid {pid}); spec reloaded")
            return
        pid = daemon.start_background(home)
    out.print(f"controller started (pid {pid}); logs in {home.logs}")


@app.command()
def down(config: ConfigOpt = None) -> None:
    """Stop the controller, HAProxy and every instance."""
    from canarist.controller import daemon

    with handled():
        home = Home.locate(config)
        pid = daemon.running_pid(home)
        if pid is None:
            out.print("controller not running")
            return
        _client(config).shutdown(everything=True)
        if not daemon.wait_stopped(pid, 60):
            fail(f"error: controller {pid} did not stop", 1)
    out.print("stopped")


# -- rollouts --------------------------------------------------------------------------


@app.command()
def deploy(
    service: str,
    release: Annotated[str, typer.Argument(help="sha256:..., a unique prefix, or a label.")],
    strategy: Annotated[
        str | None,
        typer.Option(help="canary, linear, blue-green, rolling, all-at-once or a preset."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the rollout ends.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout. With --wait: exit 0 promoted, 3 rolled back, 4 aborted, 1 error."""
    with handled():
        client = _client(config)
        rollout = client.deploy(service, release, strategy)
        if not as_json:
            out.print(
                f"rollout {rollout['id']}: {service} → {short(rollout['release'])}"
                f" ({rollout['strategy']}, {len(rollout['steps'])} steps)"
            )
        if not wait:
            if as_json:
                print(json.dumps(rollout, indent=2))
            return
        final = _follow(client, service, rollout["id"], quiet=as_json, config=config)
    if as_json:
        print(json.dumps(final, indent=2))
    else:
        out.print(f"rollout {final['id']} {final['phase']}: {final['reason']}", markup=False)
        evidence = _evidence(final.get("events") or [])
        if evidence:
            out.print(f"  {evidence}", markup=False, highlight=False)
    code = final.get("exit_code")
    raise typer.Exit(1 if code is None else code)


def _follow(
    client: Any, service: str, rollout_id: int, quiet: bool, config: Path | None = None
) -> dict[str, Any]:
    """Live progress until the rollout ends; returns the final rollout.

    A controller restart mid-rollout is waited out: the rollout resumes, so does this.
    """
    from canarist.errors import ControllerUnavailable

    def poll() -> tuple[dict[str, Any], dict[str, Any]]:
        nonlocal client
        deadline = time.monotonic() + 120
        while True:
            try:
                return client.rollout(rollout_id), client.status(service)[0]
            except ControllerUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                with contextlib.suppress(ControllerUnavailable):
                    client = _client(config)

    if quiet or not out.is_terminal:
        last = ""
        while True:
            rollout, status = poll()
            line = _progress_line(status, rollout)
            if line != last and not quiet:
                out.print(line, markup=False, highlight=False)
                last = line
            if rollout["ended_at"] is not None:
                return rollout
            time.sleep(0.25)
    with Live(console=out, refresh_per_second=4, transient=False) as live:
        while True:
            rollout, status = poll()
            live.update(render_status(status))
            if rollout["ended_at"] is not None:
                return rollout
            time.sleep(0.25)


def _progress_line(status: dict[str, Any], rollout: dict[str, Any]) -> str:
    step = status.get("step") or {}
    weights = " ".join(f"{short(r)[7:15]}={w}%" for r, w in status["weights"].items())
    where = (
        f"step {step.get('index', 0) + 1}/{step.get('total', 0)} {step.get('description', '')}"
        if step
        else rollout["phase"]
    )
    left = step.get("remaining")
    timer = f" ({left:.0f}s left)" if left else ""
    return f"[{status['phase']}] {where}{timer}{_waiting(status)}  weights {weights}"


def _waiting(status: dict[str, Any]) -> str:
    """What a paused rollout waits for, unless its step already says it."""
    step = status.get("step") or {}
    if status["phase"] != "paused" or "promote" in step.get("description", ""):
        return ""
    return f" (paused: canarist promote {status['service']} to go on)"


@app.command()
def status(
    service: Annotated[str | None, typer.Argument()] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until interrupted.")] = False,
) -> None:
    """Where each service stands."""
    with handled():
        client = _client(config)
        items = client.status(service)
        if as_json and not watch:
            print(json.dumps(items if service is None else items[0], indent=2))
            return
        if not watch:
            for item in items:
                out.print(render_status(item))
            return
        if not out.is_terminal:
            # Piped or logged: a new snapshot whenever something changes, one JSON per line
            # with --json, else the table.
            last = None
            try:
                while True:
                    items = client.status(service)
                    seen = json.dumps(items, sort_keys=True, default=str)
                    if seen != last:
                        last = seen
                        if as_json:
                            print(json.dumps(items), flush=True)
                        else:
                            for item in items:
                                out.print(render_status(item))
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return
        with Live(console=out, refresh_per_second=4) as live:
            try:
                while True:
                    items = client.status(service)
                    grid = Table.grid()
                    for item in items:
                        grid.add_row(render_status(item))
                    live.update(grid)
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return


def render_status(item: dict[str, Any]) -> Table:
    """A rich table of one service's status."""
    step = item.get("step")
    title = escape(f"{item['service']}  [{item['phase']}]  {item['endpoint']}")
    if step:
        left = step.get("remaining")
        timer = f", {left:.0f}s left" if left is not None else ""
        title += escape(
            f"\nstep {step['index'] + 1}/{step['total']}: {step['description']}{timer}"
            f"{_waiting(item)}"
        )
    analysis = item.get("analysis") or {}
    if analysis.get("verdict"):
        title += escape(
            f"\nanalysis ({analysis['judge']}): {analysis['verdict']} — {analysis['reason']}"
        )
    table = Table("release", "role", "weight", "instances", "requests", "failed", title=title)
    releases = {r for r in (item["stable"], item["canary"]) if r} | set(item["weights"])
    releases |= {i["release"] for i in item["instances"]}
    for release in sorted(releases, key=lambda r: (r != item["stable"], r)):
        role = (
            "stable"
            if release == item["stable"]
            else "canary"
            if release == item["canary"]
            else "warm"
            if release in item.get("warm", {})
            else "old"
        )
        counts = item["counters"].get(release, {})
        instances = [i for i in item["instances"] if i["release"] == release]
        running = sum(1 for i in instances if i["state"] == "running")
        table.add_row(
            short(release),
            role,
            f"{item['weights'].get(release, 0)}%",
            f"{running}/{len(instances)}",
            _with_parts(counts, "requests", "requested", "pinned"),
            _with_parts(counts, "failures", "requested_failures", "pinned_failures"),
        )
    return table


def _with_parts(counts: dict[str, int], total: str, requested: str, pinned: str) -> str:
    """A count, and how much of it came with the canary header or was kept on the release
    by a sticky cookie, when any was."""
    parts = [
        f"{n} {how}"
        for n, how in ((counts.get(requested, 0), "by header"), (counts.get(pinned, 0), "pinned"))
        if n
    ]
    return f"{counts.get(total, 0)}" + (f" ({', '.join(parts)})" if parts else "")


def _simple(verb: str, service: str, config: Path | None, **extra: Any) -> None:
    with handled():
        rollout = _client(config).command(verb, service, **extra)
    out.print(f"rollout {rollout['id']} of {service}: {rollout['phase']}")


@app.command()
def promote(
    service: str,
    full: Annotated[bool, typer.Option("--full", help="Skip every remaining step.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Move past a pause (a manual gate), or with --full finish the rollout now."""
    _simple("promote", service, config, full=full)


@app.command()
def abort(service: str, config: ConfigOpt = None) -> None:
    """Stop the rollout and send all traffic back to stable."""
    _simple("abort", service, config)


@app.command()
def rollback(service: str, config: ConfigOpt = None) -> None:
    """Return to the previous release (mid-rollout: restore stable)."""
    _simple("rollback", service, config)


@app.command()
def history(
    service: str,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="How many rollouts.")] = 20,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the audit log's hash chain (exit 1 if broken).")
    ] = False,
) -> None:
    """Past rollouts with outcome and reason."""
    with handled():
        client = _client(config)
        items = client.history(service, limit)
        if verify:
            check = client.audit_log()
            if not check["intact"]:
                fail(f"audit log tampered with: entry {check['first_broken']} does not chain", 1)
            err.print("audit log intact", highlight=False)
    if as_json:
        print(json.dumps(items, indent=2))
        return
    # One entry per rollout, the reason on its own line: readable at any terminal width.
    for r in items:
        took = (r["ended_at"] or time.time()) - r["created_at"]
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        colour = {"promoted": "green", "rolled_back": "red", "aborted": "yellow"}.get(
            r["phase"], "cyan"
        )
        out.print(
            f"#{r['id']} [bold]{r['strategy']}[/] {_hex(r['release'])} ← {_hex(r['previous'])}"
            f"  [{colour}]{r['phase']}[/] after {took:.1f}s  ({started})",
            highlight=False,
        )
        if r["reason"]:
            out.print(f"    {r['reason']}", markup=False, highlight=False)
        for line in _findings(r.get("events") or []):
            out.print(f"    {line}", markup=False, highlight=False)


def _findings(events: list[dict[str, Any]]) -> list[str]:
    """Under a rollout's reason: the figures behind its last verdict, and, after a
    rollback of a canary alone, what the old release did once it served again."""
    lines = [_evidence(events)]
    lines += [e["detail"]["summary"] for e in events if e["kind"] == "rollback.aftermath"]
    return [line for line in lines if line]


def _evidence(events: list[dict[str, Any]]) -> str:
    """The figures behind a rollout's last verdict, canary against baseline, in one line."""
    verdicts = [e["detail"] for e in events if e["kind"] == "analysis.verdict"]
    if not verdicts:
        return ""
    last = verdicts[-1]
    figures = last.get("figures") or {}

    def side(name: str) -> str:
        requests = figures.get(f"{name}_requests")
        if requests is None:
            return ""
        failures = figures.get(f"{name}_failures", 0)
        text = f"{name} {requests} requests, {failures} failed"
        if requests:
            text += f" ({100 * failures / requests:.2f}%)"
        quantiles = [
            f"p{q} {figures[f'{name}_p{q}_ms']:g} ms"
            for q in (50, 99)
            if figures.get(f"{name}_p{q}_ms") is not None
        ]
        return text + (", " + " ".join(quantiles) if quantiles else "")

    sides = [s for s in (side("canary"), side("baseline")) if s]
    return f"{last.get('verdict', '?')}: " + " | ".join(sides) if sides else ""


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Public port for the demo service.")] = 18080,
    keep: Annotated[bool, typer.Option(help="Keep the temp dir.")] = False,
) -> None:
    """The whole story on a sample app, under load, in a temp dir."""
    from canarist.demo.story import run_demo

    with handled():
        code = run_demo(port=port, keep=keep, console=out)
    raise typer.Exit(code)


def _register_audit() -> None:
    from canarist.cli.audit import audit

    app.command(help="Immutability findings for an AWS account (exit 1 when any).")(audit)


_register_audit()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
