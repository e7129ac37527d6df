"""A release's manifest and its content address.

A release is named by the sha256 of its manifest's canonical bytes. The manifest
pins every app file and every vendored wheel by its own sha256, so the one digest
covers all the bytes an instance will ever run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from canarist.errors import BadInput, UnknownRelease

FORMAT = 1
REFERENCE_PREFIX = "sha256:"
FILE_MODES = (0o644, 0o755)
MIN_PREFIX_HEX = 6

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+/@:-]{0,127}")
_PREFIX_LIKE = re.compile(rf"(sha256:)?[0-9a-fA-F]{{{MIN_PREFIX_HEX},}}")


@dataclass(frozen=True)
class FileEntry:
    """One app file: its path below the app root, sha256 hex, normalized mode and size."""

    path: str
    sha256: str
    mode: int
    size: int

    def __post_init__(self) -> None:
        _check_relative_path(self.path)
        _check_hex(self.sha256, f"sha256 of {self.path!r}")
        if type(self.mode) is not int or self.mode not in FILE_MODES:
            raise ValueError(
                f"mode of {self.path!r} must be 0o644 (420) or 0o755 (493), not {self.mode!r}"
            )
        if type(self.size) is not int or self.size < 0:
            raise ValueError(f"size of {self.path!r} must be a non-negative integer")


@dataclass(frozen=True)
class WheelEntry:
    """One vendored wheel: its file name and sha256 hex."""

    filename: str
    sha256: str

    def __post_init__(self) -> None:
        name = self.filename
        if (
            not isinstance(name, str)
            or not name.endswith(".whl")
            or name.startswith(".")
            or "/" in name
            or "\\" in name
            or "\x00" in name
        ):
            raise ValueError(f"{name!r} is not a plain wheel file name")
        _check_hex(self.sha256, f"sha256 of {name!r}")


@dataclass(frozen=True)
class Manifest:
    """Everything a release contains and how to run it; its digest is the release reference."""

    files: tuple[FileEntry, ...]
    wheels: tuple[WheelEntry, ...]
    command: tuple[str, ...]
    health: str
    format: int = FORMAT

    def __post_init__(self) -> None:
        # Entries are kept sorted so the digest does not depend on the order they were found in.
        files = tuple(sorted(self.files, key=lambda f: f.path))
        wheels = tuple(sorted(self.wheels, key=lambda w: w.filename))
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "wheels", wheels)
        object.__setattr__(self, "command", tuple(self.command))
        if type(self.format) is not int or self.format != FORMAT:
            raise ValueError(
                f"manifest format {self.format!r} is not supported (expected {FORMAT})"
            )
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise ValueError("command must be a non-empty list of non-empty strings")
        check_health_path(self.health)
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError("manifest lists a file twice")
        names = [w.filename for w in wheels]
        if len(set(names)) != len(names):
            raise ValueError("manifest lists a wheel twice")
        # A path that is both a file and a parent directory could not be unpacked.
        parents = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
        clash = parents.intersection(paths)
        if clash:
            raise ValueError(f"{min(clash)!r} is listed as a file and used as a directory")

    def canonical_bytes(self) -> bytes:
        """The manifest as JSON with sorted keys and no optional whitespace, UTF-8 encoded."""
        document = {
            "format": self.format,
            "command": list(self.command),
            "health": self.health,
            "files": [
                {"path": f.path, "sha256": f.sha256, "mode": f.mode, "size": f.size}
                for f in self.files
            ],
            "wheels": [{"filename": w.filename, "sha256": w.sha256} for w in self.wheels],
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def reference(self) -> str:
        """The release reference: "sha256:" and the hex sha256 of the canonical bytes."""
        return REFERENCE_PREFIX + hashlib.sha256(self.canonical_bytes()).hexdigest()

    def archive_members(self) -> dict[str, FileEntry | WheelEntry]:
        """The archive member name of every entry: "app/<path>" and "wheels/<filename>"."""
        members: dict[str, FileEntry | WheelEntry] = {f"app/{f.path}": f for f in self.files}
        members.update({f"wheels/{w.filename}": w for w in self.wheels})
        return members

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest bytes; raises ValueError when they are not a well-formed manifest."""
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest is not UTF-8 JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError("manifest is not a JSON object")
        _expect_keys(document, {"format", "command", "health", "files", "wheels"}, "manifest")
        files = _expect_list(document["files"], "files")
        wheels = _expect_list(document["wheels"], "wheels")
        command = _expect_list(document["command"], "command")
        file_entries = []
        for item in files:
            if not isinstance(item, dict):
                raise ValueError("a file entry is not an object")
            _expect_keys(item, {"path", "sha256", "mode", "size"}, "file entry")
            file_entries.append(FileEntry(item["path"], item["sha256"], item["mode"], item["size"]))
        wheel_entries = []
        for item in wheels:
            if not isinstance(item, dict):
                raise ValueError("a wheel entry is not an object")
            _expect_keys(item, {"filename", "sha256"}, "wheel entry")
            wheel_entries.append(WheelEntry(item["filename"], item["sha256"]))
        return cls(
            files=tuple(file_entries),
            wheels=tuple(wheel_entries),
            command=tuple(command),
            health=document["health"],
            format=document["format"],
        )


def parse_reference(text: str) -> str:
    """Return `text` if it is a full reference "sha256:<64 lowercase hex>"; else UnknownRelease."""
    if (
        not isinstance(text, str)
        or not text.startswith(REFERENCE_PREFIX)
        or not _HEX64.fullmatch(text[len(REFERENCE_PREFIX) :])
    ):
        raise UnknownRelease(
            f"{text!r} is not a release reference (expected sha256: and 64 lowercase hex digits)"
        )
    return text


def reference_hex(ref: str) -> str:
    """The 64 hex digits of a full reference."""
    return parse_reference(ref)[len(REFERENCE_PREFIX) :]


def short_reference(ref: str) -> str:
    """A reference shortened for messages: "sha256:" and its first 12 hex digits."""
    return ref[: len(REFERENCE_PREFIX) + 12] + "…"


def check_health_path(health: object) -> str:
    """Return the health path if it is a string starting with "/"; else ValueError."""
    if (
        not isinstance(health, str)
        or not health.startswith("/")
        or any(c.isspace() for c in health)
    ):
        raise ValueError(f'health must be a path starting with "/", not {health!r}')
    return health


def check_label(label: str) -> str:
    """Return `label` if it can name releases; BadInput if it is malformed or reads as a digest."""
    if not _LABEL.fullmatch(label):
        raise BadInput(
            f"label {label!r} is not valid: use up to 128 letters, digits and ._+/@:- "
            "starting with a letter or digit"
        )
    # A label that looks like a digest or prefix would make `resolve` ambiguous.
    if label.startswith(REFERENCE_PREFIX) or _PREFIX_LIKE.fullmatch(label):
        raise BadInput(f"label {label!r} is not valid: it reads as a release digest")
    return label


def _check_relative_path(path: object) -> None:
    if not isinstance(path, str) or not path:
        raise ValueError(f"file path {path!r} is not a non-empty string")
    parts = path.split("/")
    if path.startswith("/") or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"file path {path!r} is not a plain relative path")


def _check_hex(value: object, what: str) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{what} is not 64 lowercase hex digits")


def _expect_keys(document: dict[str, Any], keys: set[str], what: str) -> None:
    if set(document) != keys:
        raise ValueError(f"{what} has keys {sorted(document)}, expected {sorted(keys)}")


def _expect_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list")
    return value
