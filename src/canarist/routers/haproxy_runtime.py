"""HAProxy's Runtime API, spoken over its unix stats socket: the only module that does.

Each call opens one connection in non-interactive mode: HAProxy runs the line's commands
(separated by ``;``) in order, answers, and closes. Refusals come back as text in the
reply, never as a status code, so every reply of a change is checked here and turned
into `RouterError`; so is any socket failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ipaddress
import os
import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from canarist.errors import RouterError

AdminState = Literal["ready", "drain", "maint"]
Health = Literal["up", "stopping", "down"]

# srv_admin_state bits (HAProxy's enum srv_admin). CMAINT alone only records that the
# config said "disabled"; the server leaves maintenance once FMAINT is cleared.
_ADMIN_FORCED_MAINT = 0x01
_ADMIN_INHERITED_MAINT = 0x02
_ADMIN_RESOLUTION_MAINT = 0x20
_ADMIN_FORCED_DRAIN = 0x08
_ADMIN_INHERITED_DRAIN = 0x10
_MAINT_BITS = _ADMIN_FORCED_MAINT | _ADMIN_INHERITED_MAINT | _ADMIN_RESOLUTION_MAINT
_DRAIN_BITS = _ADMIN_FORCED_DRAIN | _ADMIN_INHERITED_DRAIN

# The kernel's sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
# `show stat`'s type mask for server rows (1: frontends, 2: backends, 4: servers).
_SERVERS = 4
# HAProxy reads one command line into a buffer of tune.bufsize (16 kB by default).
_MAX_LINE = 8000
# `set server ... addr` is the only change that reports success in words.
_ADDR_ACK = re.compile(r"changed from|no need to change")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class ServerState:
    """One server as `show servers state` reports it."""

    backend: str
    name: str
    addr: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int
    weight: int  # the user weight, what `set server weight` last set
    check_health: int

    @property
    def in_maint(self) -> bool:
        """True while the server is in maintenance (no traffic, no checks)."""
        return bool(self.admin_state & _MAINT_BITS)

    @property
    def draining(self) -> bool:
        """True while the server only takes persistent (sticky) traffic."""
        return bool(self.admin_state & _DRAIN_BITS) and not self.in_maint

    @property
    def admin(self) -> AdminState:
        """The administrative state in the words `set server state` takes."""
        if self.in_maint:
            return "maint"
        return "drain" if self.draining else "ready"


def _server_ref(backend: str, server: str) -> str:
    for part in (backend, server):
        if not _NAME.match(part):
            raise RouterError(f"not a usable HAProxy proxy or server name: {part!r}")
    return f"{backend}/{server}"


def set_addr(backend: str, server: str, ip: str, port: int) -> str:
    """The command that points a server at ip:port."""
    try:
        ipaddress.ip_address(ip)
    except ValueError as exc:
        raise RouterError(f"HAProxy needs an IP address for a server, not {ip!r}") from exc
    if not 0 < port < 65536:
        raise RouterError(f"not a TCP port: {port}")
    return f"set server {_server_ref(backend, server)} addr {ip} port {port}"


def set_weight(backend: str, server: str, weight: int) -> str:
    """The command that sets a server's weight (0..256)."""
    if not 0 <= weight <= 256:
        raise RouterError(f"HAProxy weights run from 0 to 256, not {weight}")
    return f"set server {_server_ref(backend, server)} weight {weight}"


def set_state(backend: str, server: str, state: AdminState) -> str:
    """The command that puts a server in ready, drain or maint."""
    return f"set server {_server_ref(backend, server)} state {state}"


def set_health(backend: str, server: str, health: Health) -> str:
    """The command that forces a checked server's health status."""
    return f"set server {_server_ref(backend, server)} health {health}"


class RuntimeAPI:
    """A client of one HAProxy's admin-level stats socket."""

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def query(self, *commands: str) -> str:
        """Run commands in one connection and return HAProxy's whole reply."""
        line = ";".join(commands)
        if "\n" in line:
            raise RouterError("a Runtime API command cannot hold a newline")
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    reply = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as exc:
            raise RouterError(
                f"HAProxy did not answer on {self.socket_path} within {self.timeout}s"
            ) from exc
        except OSError as exc:
            raise RouterError(f"HAProxy's socket {self.socket_path} is unreachable: {exc}") from exc
        return reply.decode(errors="replace")

    async def run(self, commands: Sequence[str]) -> None:
        """Apply changes in order, as few connections as fit; raise on any refusal."""
        for batch in _batches(commands):
            reply = await self.query(*batch)
            refused = [
                line for line in reply.splitlines() if line.strip() and not _ADDR_ACK.search(line)
            ]
            if refused:
                raise RouterError(
                    "HAProxy refused a change: " + " | ".join(refused[:5]) + f" (in: {batch})"
                )

    async def info(self) -> dict[str, str]:
        """`show info` as a dict (Pid, Uptime_sec, CurrConns, ...)."""
        reply = await self.query("show info")
        info: dict[str, str] = {}
        for line in reply.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
        if "Pid" not in info:
            raise RouterError(f"unexpected answer to 'show info': {reply[:200]!r}")
        return info

    async def stat(self, only: Container[tuple[str, str]] | None = None) -> list[dict[str, str]]:
        """`show stat` for every server of every backend (or only these (backend, server)
        pairs), one dict per CSV row. Frontends' and backends' own rows are not asked for:
        their answer would be a third longer."""
        reply = await self.query(f"show stat -1 {_SERVERS} -1")
        start = reply.find("# pxname")
        if start < 0:
            raise RouterError(f"unexpected answer to 'show stat': {reply[:200]!r}")
        lines = reply[start + 2 :].splitlines()
        header = next(csv.reader(lines[:1]))
        while header and not header[-1]:
            header.pop()  # every line ends with a comma
        if only is not None:
            # Names hold no comma (see _NAME): the first two fields are read without csv.
            lines[1:] = [line for line in lines[1:] if tuple(line.split(",", 2)[:2]) in only]
        rows = csv.reader(lines[1:])
        # A row holds one more field than the header kept: the empty one after the last comma.
        return [dict(zip(header, row, strict=False)) for row in rows if row and row[0]]

    async def servers_state(self, *backends: str) -> list[ServerState]:
        """`show servers state` for these backends (in one connection), or all of them."""
        for backend in backends:
            if not _NAME.match(backend):
                raise RouterError(f"not a usable HAProxy backend name: {backend!r}")
        commands = [f"show servers state {b}" for b in backends] or ["show servers state"]
        return parse_servers_state(await self.query(*commands))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if len(os.fsencode(self.socket_path)) <= _SUN_PATH_MAX:
            return await asyncio.open_unix_connection(self.socket_path)
        # Too long for sun_path: reach the socket through its directory's descriptor.
        dir_fd = os.open(self.socket_path.parent, os.O_PATH)
        try:
            short = f"/proc/self/fd/{dir_fd}/{self.socket_path.name}"
            return await asyncio.open_unix_connection(short)
        finally:
            os.close(dir_fd)


def parse_servers_state(reply: str) -> list[ServerState]:
    """Parse `show servers state` output (format version 1)."""
    lines = reply.splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        raise RouterError(f"unexpected answer to 'show servers state': {reply[:200]!r}")
    columns = header[2:].split()
    states: list[ServerState] = []
    for line in lines:
        fields = line.split()
        if not fields or line.startswith("#") or len(fields) < len(columns):
            continue
        row = dict(zip(columns, fields, strict=False))
        try:
            states.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    addr=row["srv_addr"],
                    port=int(row["srv_port"]),
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                    weight=int(row["srv_uweight"]),
                    check_health=int(row["srv_check_health"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise RouterError(f"unexpected 'show servers state' row: {line!r}") from exc
    return states


def _batches(commands: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    size = 0
    for command in commands:
        if not batches or size + len(command) + 1 > _MAX_LINE:
            batches.append([])
            size = 0
        batches[-1].append(command)
        size += len(command) + 1
    return batches
