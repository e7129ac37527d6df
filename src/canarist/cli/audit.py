"""`canarist audit`: what in an AWS account breaks the immutable pattern.

Exit 0 when nothing is found, 1 when anything is (or AWS cannot be read), 2 on bad input.
boto3 is imported only when the command runs, so the rest of the CLI starts without it.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer


def audit(
    region: Annotated[
        str | None,
        typer.Option(help="AWS region to audit (default: the AWS configuration's)."),
    ] = None,
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            metavar="DAYS",
            help="Running instances older than this are findings: replace them.",
        ),
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Security groups open to the world on 22/3389, key pairs, instances too old."""
    from rich.table import Table

    from canarist.cli.main import err, handled, out

    with handled():
        from canarist.aws.audit import audit as run_audit
        from canarist.aws.clients import session

        findings = run_audit(session(region), max_age)
    if as_json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    elif findings:
        table = Table("kind", "resource", "region", "detail")
        for finding in findings:
            table.add_row(finding.kind, finding.resource, finding.region, finding.detail)
        out.print(table)
    if findings:
        err.print(f"{len(findings)} finding{'s' if len(findings) > 1 else ''}", highlight=False)
        raise typer.Exit(1)
    if not as_json:
        out.print("no findings", highlight=False)
