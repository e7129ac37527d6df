"""The local content-addressed artifact store: releases on disk, named by their digest.

Layout, one directory per release, committed by a single rename::

    ROOT/<64 hex>/manifest.json     canonical manifest bytes; their sha256 is the name
    ROOT/<64 hex>/release.tar.gz    app/... and wheels/..., every member pinned by the manifest
    ROOT/<64 hex>/meta.json         labels, creation time, archive size (not part of the digest)
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from canarist.domain.release import (
    MIN_PREFIX_HEX,
    REFERENCE_PREFIX,
    FileEntry,
    Manifest,
    WheelEntry,
    check_label,
    parse_reference,
    reference_hex,
    short_reference,
)
from canarist.errors import TamperedRelease, UnknownRelease
from canarist.releases.base import RunnableRelease
from canarist.releases.venv import VenvCache, file_lock, fsync_dir, make_read_only, remove_tree

MANIFEST = "manifest.json"
ARCHIVE = "release.tar.gz"
META = "meta.json"

_CHUNK = 1 << 16
_HEX = re.compile(r"[0-9a-fA-F]+")
_DIGEST_DIR = re.compile(r"[0-9a-f]{64}")

# Where `_stream` sends a member's bytes: an open binary file to keep them, or None to only check.
_Sink = Callable[[FileEntry | WheelEntry], IO[bytes] | None]


@dataclass
class _Meta:
    """meta.json: what the store knows about a release beyond its bytes."""

    created: float
    size: int
    labels: dict[str, float]  # label -> when it was (last) applied

    def to_bytes(self) -> bytes:
        """The JSON written to meta.json."""
        document = {"created": self.created, "size": self.size, "labels": self.labels}
        return json.dumps(document, sort_keys=True, indent=2).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class StoredRelease:
    """A release as `list` shows it."""

    ref: str
    labels: tuple[str, ...]  # oldest first
    created: float  # wall clock of the first store
    size: int  # archive bytes
    command: tuple[str, ...]
    health: str


class LocalArtifactStore:
    """Releases in a local directory, addressed by digest; also the platforms' `ReleaseSource`."""

    def __init__(
        self,
        root: Path,
        *,
        venv_root: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.venvs = VenvCache(venv_root if venv_root is not None else root.parent / "venvs")
        self._clock = clock

    # -- writing ---------------------------------------------------------------------------

    def put(self, manifest: Manifest, archive_path: Path, label: str | None = None) -> str:
        """Store a release (a no-op if present, apart from adding `label`) and return its ref."""
        if label is not None:
            check_label(label)
        ref = manifest.reference()
        entry = self.root / reference_hex(ref)
        if not entry.is_dir():
            # The store holds only releases that verify, so check the bytes before committing.
            self._stream(ref, manifest, archive_path, lambda _entry: None)
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".lock"):
            # Staging dirs are made only under this lock, so any found now is from a crash.
            for stale in self.root.glob(".tmp-*"):
                remove_tree(stale)
            if not entry.is_dir():
                self._commit(entry, manifest, archive_path, label)
            elif label is not None:
                meta = self._meta(entry)
                meta.labels[label] = self._clock()
                _write_atomic(entry / META, meta.to_bytes())
        return ref

    def _commit(
        self, entry: Path, manifest: Manifest, archive_path: Path, label: str | None
    ) -> None:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            shutil.copyfile(archive_path, staging / ARCHIVE)
            _fsync_file(staging / ARCHIVE)
            now = self._clock()
            meta = _Meta(
                created=now,
                size=(staging / ARCHIVE).stat().st_size,
                labels={label: now} if label is not None else {},
            )
            _write_durable(staging / MANIFEST, manifest.canonical_bytes())
            _write_durable(staging / META, meta.to_bytes())
            # Release bytes are never rewritten; only meta.json is replaced (by a rename).
            os.chmod(staging / ARCHIVE, 0o444)
            os.chmod(staging / MANIFEST, 0o444)
            fsync_dir(staging)
            os.chmod(staging, 0o755)
            # The rename is the commit point: a crash before it leaves only a .tmp- dir.
            os.rename(staging, entry)
            fsync_dir(self.root)
        except BaseException:
            remove_tree(staging)
            raise

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[StoredRelease]:
        """Every stored release, newest first; TamperedRelease if a manifest no longer matches."""
        releases = []
        for hex_digest in self._digests():
            ref = REFERENCE_PREFIX + hex_digest
            manifest = self.manifest(ref)
            meta = self._meta(self.root / hex_digest)
            labels = sorted(meta.labels, key=lambda name: meta.labels[name])
            releases.append(
                StoredRelease(
                    ref=ref,
                    labels=tuple(labels),
                    created=meta.created,
                    size=meta.size,
                    command=manifest.command,
                    health=manifest.health,
                )
            )
        releases.sort(key=lambda r: (-r.created, r.ref))
        return releases

    def resolve(self, text: str) -> str:
        """The full ref for a full ref, a unique hex prefix (6+ digits, "sha256:" optional) or a
        label (its newest release). Raises UnknownRelease when nothing or several match."""
        text = text.strip()
        if text.startswith(REFERENCE_PREFIX):
            return self._by_prefix(text[len(REFERENCE_PREFIX) :], text)
        labelled = self._newest_labelled(text)
        if labelled is not None:
            return labelled
        if _HEX.fullmatch(text) and len(text) >= MIN_PREFIX_HEX:
            return self._by_prefix(text, text)
        if _HEX.fullmatch(text):
            raise UnknownRelease(
                f"no release is labelled {text!r}, and a digest prefix needs at least "
                f"{MIN_PREFIX_HEX} hex digits"
            )
        raise UnknownRelease(
            f"no release is labelled {text!r}, and it is not a digest or a digest prefix"
        )

    def manifest(self, ref: str) -> Manifest:
        """The manifest of a stored release, checked against its digest (archive not read)."""
        ref = parse_reference(ref)
        entry = self._entry(ref)
        try:
            data = (entry / MANIFEST).read_bytes()
        except FileNotFoundError as exc:
            raise _tampered(ref, f"{MANIFEST} missing") from exc
        if hashlib.sha256(data).hexdigest() != reference_hex(ref):
            raise _tampered(ref, f"{MANIFEST} changed")
        try:
            return Manifest.from_bytes(data)
        except ValueError as exc:
            # Bytes that hash to the ref yet do not parse were crafted, not built by canarist.
            raise _tampered(ref, f"{MANIFEST} is malformed ({exc})") from exc

    def verify(self, ref: str) -> Manifest:
        """Check the manifest against the digest and the archive against the manifest, in full."""
        manifest = self.manifest(ref)
        self._stream(ref, manifest, self._entry(ref) / ARCHIVE, lambda _entry: None)
        return manifest

    # -- ReleaseSource ---------------------------------------------------------------------

    def prepare(self, ref: str) -> RunnableRelease:
        """Verify the release in full and build (or reuse) its offline venv."""
        manifest = self.verify(ref)
        venv = self.venvs.ensure(ref, lambda wheel_dir: self.extract_wheels(ref, wheel_dir))
        return RunnableRelease(ref=ref, command=manifest.command, health=manifest.health, venv=venv)

    def extract_wheels(self, ref: str, wheel_dir: Path) -> builtins.list[Path]:
        """Write the release's wheels into `wheel_dir`, each checked against the manifest."""
        manifest = self.manifest(ref)
        written: builtins.list[Path] = []

        def sink(item: FileEntry | WheelEntry) -> IO[bytes] | None:
            if isinstance(item, FileEntry):
                return None  # still read and checked
            written.append(wheel_dir / item.filename)
            return _create_exclusive(written[-1])

        # A fresh read, each entry checked again: the archive may change after a verify.
        self._stream(ref, manifest, self._entry(ref) / ARCHIVE, sink)
        return written

    def unpack(self, ref: str, dest: Path) -> None:
        """Fresh, read-only unpack of the app files into `dest`, each checked while extracting.

        Raises FileExistsError if `dest` exists; nothing is left at `dest` on any failure.
        """
        manifest = self.manifest(ref)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"{dest} already exists; a release is unpacked only afresh")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
        try:

            def sink(item: FileEntry | WheelEntry) -> IO[bytes] | None:
                if isinstance(item, WheelEntry):
                    return None  # still read and checked, so a tampered wheel is refused too
                # The manifest's paths are plain relative ones (no "..", no leading "/"), the
                # staging tree is ours alone, and O_NOFOLLOW/O_EXCL refuse anything planted.
                target = staging.joinpath(*item.path.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                return _create_exclusive(target)

            self._stream(ref, manifest, self._entry(ref) / ARCHIVE, sink)
            for item in manifest.files:
                target = staging.joinpath(*item.path.split("/"))
                os.chmod(target, 0o555 if item.mode == 0o755 else 0o444)
            make_read_only(staging)
            os.rename(staging, dest)
        except BaseException:
            remove_tree(staging)
            raise

    # -- internals -------------------------------------------------------------------------

    def _entry(self, ref: str) -> Path:
        entry = self.root / reference_hex(ref)
        if not entry.is_dir():
            raise UnknownRelease(
                f"release {short_reference(ref)} is not in the artifact store at {self.root}"
            )
        return entry

    def _digests(self) -> builtins.list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _DIGEST_DIR.fullmatch(n) and (self.root / n).is_dir())

    def _by_prefix(self, prefix: str, text: str) -> str:
        if not _HEX.fullmatch(prefix) or len(prefix) > 64:
            raise UnknownRelease(f"{text!r} is not a release digest or digest prefix")
        if len(prefix) < MIN_PREFIX_HEX:
            raise UnknownRelease(
                f"{text!r} is too short: give at least {MIN_PREFIX_HEX} hex digits of the digest"
            )
        prefix = prefix.lower()
        matches = [d for d in self._digests() if d.startswith(prefix)]
        if not matches:
            raise UnknownRelease(f"no release in the artifact store matches {text!r}")
        if len(matches) > 1:
            shown = ", ".join(short_reference(REFERENCE_PREFIX + d) for d in matches[:3])
            more = f" and {len(matches) - 3} more" if len(matches) > 3 else ""
            raise UnknownRelease(f"{text!r} is ambiguous: it matches {shown}{more}")
        return REFERENCE_PREFIX + matches[0]

    def _newest_labelled(self, label: str) -> str | None:
        best: tuple[float, str] | None = None
        for hex_digest in self._digests():
            applied = self._meta(self.root / hex_digest).labels.get(label)
            if applied is not None and (best is None or applied > best[0]):
                best = (applied, REFERENCE_PREFIX + hex_digest)
        return best[1] if best is not None else None

    def _meta(self, entry: Path) -> _Meta:
        """The entry's metadata; unreadable metadata costs labels and dates, never the release."""
        document: dict[str, Any] = {}
        try:
            loaded = json.loads((entry / META).read_bytes())
            if isinstance(loaded, dict):
                document = loaded
        except (OSError, ValueError):
            pass
        created, size, labels = (document.get(k) for k in ("created", "size", "labels"))
        if not isinstance(size, int):
            try:
                size = (entry / ARCHIVE).stat().st_size
            except OSError:
                size = 0
        return _Meta(
            created=float(created) if isinstance(created, int | float) else 0.0,
            size=size,
            labels={
                str(name): float(at)
                for name, at in (labels.items() if isinstance(labels, dict) else ())
                if isinstance(at, int | float)
            },
        )

    def _stream(self, ref: str, manifest: Manifest, archive: Path, sink: _Sink) -> None:
        """Read the whole archive, checking that it holds exactly the manifest's members."""
        expected = manifest.archive_members()
        seen: set[str] = set()
        try:
            raw = open(archive, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError as exc:
            raise _tampered(ref, f"{ARCHIVE} missing") from exc
        try:
            with raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                with tarfile.open(fileobj=gz, mode="r|") as tar:
                    for member in tar:
                        name = member.name
                        item = expected.get(name)
                        if item is None or name in seen:
                            what = "a second copy of" if item is not None else "unexpected"
                            raise _tampered(ref, f"archive holds {what} {name}")
                        seen.add(name)
                        if not member.isreg():
                            raise _tampered(ref, f"{name} is not a regular file")
                        if isinstance(item, FileEntry) and member.size != item.size:
                            raise _tampered(ref, f"{name} changed")
                        if isinstance(item, FileEntry) and member.mode & 0o7777 != item.mode:
                            raise _tampered(ref, f"{name} mode changed")
                        source = tar.extractfile(member)
                        if source is None:
                            raise _tampered(ref, f"{name} has no body")
                        if _copy_hashed(source, sink(item)) != item.sha256:
                            raise _tampered(ref, f"{name} changed")
                # Anything after the end-of-archive marker is hidden content, and reading to
                # the end makes gzip check its CRC.
                while chunk := gz.read(_CHUNK):
                    if chunk.strip(b"\x00"):
                        raise _tampered(ref, "archive has data after its end")
        except (gzip.BadGzipFile, zlib.error, EOFError, tarfile.TarError) as exc:
            raise _tampered(ref, f"archive is corrupt ({exc or type(exc).__name__})") from exc
        missing = sorted(set(expected) - seen)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise _tampered(ref, f"{missing[0]}{more} missing from the archive")


def _tampered(ref: str, detail: str) -> TamperedRelease:
    return TamperedRelease(f"release {short_reference(ref)} does not match its digest: {detail}")


def _copy_hashed(source: IO[bytes], out: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    try:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


def _create_exclusive(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
