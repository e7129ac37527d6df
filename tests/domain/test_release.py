"""The release manifest and its reference: pure, no files."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from canarist.domain.release import (
    FileEntry,
    Manifest,
    WheelEntry,
    check_label,
    parse_reference,
    reference_hex,
    short_reference,
)
from canarist.errors import BadInput, UnknownRelease

A = "a" * 64
B = "b" * 64


def sample(**changes: object) -> Manifest:
    """A two-file, one-wheel manifest with optional field changes."""
    fields: dict[str, object] = {
        "files": (FileEntry("server.py", A, 0o644, 10), FileEntry("bin/run", B, 0o755, 3)),
        "wheels": (WheelEntry("six-1.16.0-py2.py3-none-any.whl", B),),
        "command": ("python", "server.py"),
        "health": "/healthz",
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_canonical_bytes_are_exact_and_sorted() -> None:
    """The canonical form is compact JSON with sorted keys and entries sorted by path."""
    expected = (
        '{"command":["python","server.py"],"files":['
        f'{{"mode":493,"path":"bin/run","sha256":"{B}","size":3}},'
        f'{{"mode":420,"path":"server.py","sha256":"{A}","size":10}}],'
        '"format":1,"health":"/healthz","wheels":['
        f'{{"filename":"six-1.16.0-py2.py3-none-any.whl","sha256":"{B}"}}]}}'
    )
    assert sample().canonical_bytes() == expected.encode()


def test_entry_order_does_not_change_the_reference() -> None:
    """Files listed in another order give the same bytes and the same reference."""
    reordered = sample(files=tuple(reversed(sample().files)))
    assert reordered.canonical_bytes() == sample().canonical_bytes()
    assert reordered.reference() == sample().reference()


def test_reference_is_the_sha256_of_the_canonical_bytes() -> None:
    """A reference is "sha256:" and 64 lowercase hex digits of the canonical bytes' digest."""
    manifest = sample()
    ref = manifest.reference()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", ref)
    assert ref == "sha256:" + hashlib.sha256(manifest.canonical_bytes()).hexdigest()
    assert reference_hex(ref) == ref.removeprefix("sha256:")


def test_any_change_changes_the_reference() -> None:
    """Content, mode, command and health are all covered by the digest."""
    base = sample().reference()
    assert sample(health="/ready").reference() != base
    assert sample(command=("python", "-u", "server.py")).reference() != base
    assert sample(files=(FileEntry("server.py", A, 0o755, 10),)).reference() != (
        sample(files=(FileEntry("server.py", A, 0o644, 10),)).reference()
    )


def test_non_ascii_paths_are_utf8() -> None:
    """Names outside ASCII are written as UTF-8, not escaped, and read back the same."""
    manifest = sample(files=(FileEntry("static/café.txt", A, 0o644, 1),))
    assert "café".encode() in manifest.canonical_bytes()
    assert Manifest.from_bytes(manifest.canonical_bytes()) == manifest


def test_from_bytes_round_trips() -> None:
    """Parsing the canonical bytes gives back an equal manifest with the same reference."""
    manifest = sample()
    parsed = Manifest.from_bytes(manifest.canonical_bytes())
    assert parsed == manifest
    assert parsed.reference() == manifest.reference()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("health"),
        lambda d: d.update(extra=1),
        lambda d: d.update(format=2),
        lambda d: d.update(command=[]),
        lambda d: d.update(health="healthz"),
        lambda d: d["files"][0].update(path="../escape.py"),
        lambda d: d["files"][0].update(path="/etc/passwd"),
        lambda d: d["files"][0].update(path="a//b"),
        lambda d: d["files"][0].update(mode=0o777),
        lambda d: d["files"][0].update(mode=420.0),
        lambda d: d["files"][0].update(sha256="A" * 64),
        lambda d: d["files"][0].update(size=-1),
        lambda d: d["wheels"][0].update(filename="../six.whl"),
        lambda d: d["wheels"][0].update(filename="six.tar.gz"),
        lambda d: d["files"].append(dict(d["files"][0])),
    ],
    ids=[
        "missing-key",
        "extra-key",
        "format",
        "empty-command",
        "health",
        "dotdot",
        "absolute",
        "empty-segment",
        "mode",
        "float-mode",
        "upper-hex",
        "size",
        "wheel-path",
        "not-a-wheel",
        "duplicate",
    ],
)
def test_from_bytes_rejects_malformed_manifests(mutate: object) -> None:
    """Anything but a well-formed manifest is a ValueError, never a half-parsed one."""
    document = json.loads(sample().canonical_bytes())
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ValueError):
        Manifest.from_bytes(json.dumps(document).encode())


def test_from_bytes_rejects_non_json() -> None:
    """Bytes that are not JSON are a ValueError."""
    with pytest.raises(ValueError, match="not UTF-8 JSON"):
        Manifest.from_bytes(b"\xff{")


def test_a_file_cannot_also_be_a_directory() -> None:
    """ "lib" as a file and "lib/x.py" could not both be unpacked."""
    with pytest.raises(ValueError, match="used as a directory"):
        sample(files=(FileEntry("lib", A, 0o644, 1), FileEntry("lib/x.py", A, 0o644, 1)))


def test_archive_members_name_app_and_wheels() -> None:
    """Each entry has one archive member name, under app/ or wheels/."""
    assert sorted(sample().archive_members()) == [
        "app/bin/run",
        "app/server.py",
        "wheels/six-1.16.0-py2.py3-none-any.whl",
    ]


def test_parse_reference_accepts_a_full_reference() -> None:
    """A well-formed reference is returned unchanged."""
    assert parse_reference("sha256:" + A) == "sha256:" + A


@pytest.mark.parametrize(
    "text",
    ["", A, "sha256:" + A[:63], "sha256:" + A + "0", "sha256:" + "A" * 64, "md5:" + A, " sha256:"],
)
def test_parse_reference_rejects_malformed_text(text: str) -> None:
    """Anything but "sha256:" and 64 lowercase hex digits is an UnknownRelease that says so."""
    with pytest.raises(UnknownRelease, match="is not a release reference"):
        parse_reference(text)


def test_short_reference() -> None:
    """Messages show the first 12 hex digits."""
    assert short_reference("sha256:" + "0123456789ab" + "c" * 52) == "sha256:0123456789ab…"


@pytest.mark.parametrize("label", ["v1", "v1.2.3", "2024-06-01", "feature/login", "blue+green"])
def test_check_label_accepts_names(label: str) -> None:
    """Ordinary version and branch names are labels."""
    assert check_label(label) == label


@pytest.mark.parametrize(
    "label", ["", "-v1", "has space", "x" * 129, "abc123", "DEADBEEF", "sha256:v1"]
)
def test_check_label_rejects_malformed_or_digest_like_labels(label: str) -> None:
    """A label must not be empty, odd, or readable as a digest prefix."""
    with pytest.raises(BadInput):
        check_label(label)
