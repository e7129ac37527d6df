"""The local artifact store: listing, resolving, verifying and unpacking by digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from canarist.domain.release import Manifest
from canarist.errors import BadInput, TamperedRelease, UnknownRelease
from canarist.releases.build import build_release
from canarist.releases.store import LocalArtifactStore


def entry_of(store: LocalArtifactStore, ref: str) -> Path:
    """The directory holding a stored release."""
    return store.root / ref.removeprefix("sha256:")


def rewrite_archive(
    archive: Path, change: Callable[[list[tuple[tarfile.TarInfo, bytes]]], None]
) -> None:
    """Rewrite a stored archive after `change` edits its (member, bytes) list in place."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    change(members)
    archive.chmod(0o644)
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def flip_a_byte(store: LocalArtifactStore, ref: str) -> str:
    archive = entry_of(store, ref) / "release.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.chmod(0o644)
    archive.write_bytes(bytes(data))
    return "archive is corrupt|changed"


def change_a_file(store: LocalArtifactStore, ref: str) -> str:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        for i, (info, data) in enumerate(members):
            if info.name == "app/server.py":
                members[i] = (info, data.replace(b"ok", b"OK"))

    rewrite_archive(entry_of(store, ref) / "release.tar.gz", change)
    return r"app/server\.py changed"


def add_a_file(store: LocalArtifactStore, ref: str) -> str:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members.append((tarfile.TarInfo("app/extra.py"), b"print('surprise')\n"))

    rewrite_archive(entry_of(store, ref) / "release.tar.gz", change)
    return r"unexpected app/extra\.py"


def escape_the_app(store: LocalArtifactStore, ref: str) -> str:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members.append((tarfile.TarInfo("app/../../escaped.py"), b"print('out')\n"))

    rewrite_archive(entry_of(store, ref) / "release.tar.gz", change)
    return r"unexpected app/\.\./\.\./escaped.py"


def drop_a_file(store: LocalArtifactStore, ref: str) -> str:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members[:] = [(i, d) for i, d in members if i.name != "app/lib/greeting.py"]

    rewrite_archive(entry_of(store, ref) / "release.tar.gz", change)
    return r"app/lib/greeting\.py missing"


def make_executable(store: LocalArtifactStore, ref: str) -> str:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        for info, _ in members:
            if info.name == "app/server.py":
                info.mode = 0o755

    rewrite_archive(entry_of(store, ref) / "release.tar.gz", change)
    return r"app/server\.py mode changed"


def edit_the_manifest(store: LocalArtifactStore, ref: str) -> str:
    path = entry_of(store, ref) / "manifest.json"
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b'"/healthz"', b'"/other"'))
    return r"manifest\.json changed"


def append_after_the_end(store: LocalArtifactStore, ref: str) -> str:
    archive = entry_of(store, ref) / "release.tar.gz"
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    archive.chmod(0o644)
    archive.write_bytes(gzip.compress(buffer.getvalue() + b"hidden payload", mtime=0))
    return "data after its end"


TAMPERINGS = [
    flip_a_byte,
    change_a_file,
    add_a_file,
    escape_the_app,
    drop_a_file,
    make_executable,
    edit_the_manifest,
    append_after_the_end,
]


def test_verify_returns_the_manifest(ref: str, store: LocalArtifactStore) -> None:
    """An untouched release verifies, and its manifest hashes to its reference."""
    manifest = store.verify(ref)
    assert manifest.reference() == ref
    assert manifest.command == ("python", "server.py")


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda t: t.__name__)
def test_tampered_releases_are_refused(
    tmp_path: Path,
    ref: str,
    store: LocalArtifactStore,
    tamper: Callable[[LocalArtifactStore, str], str],
) -> None:
    """verify, prepare and unpack all refuse, with one line naming what changed."""
    detail = tamper(store, ref)
    short = ref[: len("sha256:") + 12]
    for attempt in (
        lambda: store.verify(ref),
        lambda: store.prepare(ref),
        lambda: store.unpack(ref, tmp_path / "instance"),
    ):
        with pytest.raises(TamperedRelease, match=detail) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith(f"release {short}… does not match its digest: ")
        assert "\n" not in message
    assert not (tmp_path / "instance").exists()
    assert not (tmp_path / "escaped.py").exists()
    assert not store.venvs.path(ref).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".instance")] == []


def test_a_crafted_manifest_with_its_own_digest_cannot_escape(
    tmp_path: Path, store: LocalArtifactStore
) -> None:
    """A manifest naming "../x" is refused even when the directory is named by its hash."""
    data = (
        b'{"command":["python"],"files":[{"mode":420,"path":"../../escaped.py","sha256":"'
        + b"0" * 64
        + b'","size":0}],"format":1,"health":"/","wheels":[]}'
    )
    digest = hashlib.sha256(data).hexdigest()
    (store.root / digest).mkdir(parents=True)
    (store.root / digest / "manifest.json").write_bytes(data)
    with pytest.raises(TamperedRelease, match=r"manifest\.json is malformed"):
        store.unpack("sha256:" + digest, tmp_path / "instance")
    assert not (tmp_path / "escaped.py").exists()


def test_unknown_and_malformed_references(tmp_path: Path, store: LocalArtifactStore) -> None:
    """A well-formed but absent ref and a malformed one are both UnknownRelease."""
    absent = "sha256:" + "0" * 64
    for call in (store.verify, store.prepare, store.manifest):
        with pytest.raises(UnknownRelease, match="is not in the artifact store"):
            call(absent)
    with pytest.raises(UnknownRelease):
        store.unpack(absent, tmp_path / "x")
    with pytest.raises(UnknownRelease, match="is not a release reference"):
        store.verify("sha256:xyz")


def test_unpack_writes_the_app_read_only(
    tmp_path: Path, app_dir: Path, ref: str, store: LocalArtifactStore
) -> None:
    """Exactly the app's files, with their bytes, files 0o444/0o555 and directories 0o555."""
    dest = tmp_path / "instances" / "i-1"
    store.unpack(ref, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [f.path for f in store.manifest(ref).files]
    assert (dest / "server.py").read_bytes() == (app_dir / "server.py").read_bytes()
    assert stat.S_IMODE((dest / "server.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "bin" / "start.sh").stat().st_mode) == 0o555
    for directory in (dest, dest / "lib", dest / "bin"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o555
    assert [p.name for p in dest.parent.iterdir()] == ["i-1"]


def test_unpack_needs_a_fresh_destination(
    tmp_path: Path, ref: str, store: LocalArtifactStore
) -> None:
    """An instance never reuses files: an existing destination is refused and left alone."""
    dest = tmp_path / "instance"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine\n")
    with pytest.raises(FileExistsError):
        store.unpack(ref, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_stored_bytes_are_read_only(ref: str, store: LocalArtifactStore) -> None:
    """The manifest and archive are never rewritten in place."""
    for name in ("manifest.json", "release.tar.gz"):
        assert stat.S_IMODE((entry_of(store, ref) / name).stat().st_mode) == 0o444


def test_list_is_newest_first_with_metadata(app_dir: Path, store: LocalArtifactStore) -> None:
    """Each release shows its labels, size, command and health."""
    old = build_release(app_dir, store, label="v1")
    (app_dir / "server.py").write_text("print('v2')\n")
    new = build_release(app_dir, store, label="v2")
    listed = store.list()
    assert [r.ref for r in listed] == [new, old]
    assert listed[0].labels == ("v2",)
    assert listed[0].created > listed[1].created
    assert listed[0].size == (entry_of(store, new) / "release.tar.gz").stat().st_size
    assert listed[0].command == ("python", "server.py")
    assert listed[0].health == "/healthz"


def test_storing_again_only_adds_the_label(ref: str, store: LocalArtifactStore) -> None:
    """Same bytes, same entry: the creation time stays, the new label is added."""
    created = store.list()[0].created
    manifest = store.manifest(ref)
    archive = entry_of(store, ref) / "release.tar.gz"
    assert store.put(manifest, archive, label="again") == ref
    assert store.list()[0].created == created
    assert store.list()[0].labels == ("again",)
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".tmp")] == []


def test_put_refuses_an_archive_that_does_not_match(
    tmp_path: Path,
    ref: str,
    store: LocalArtifactStore,
    make_store: Callable[[str], LocalArtifactStore],
) -> None:
    """The store never takes in a release that would not verify."""
    other = make_store("other")
    manifest = store.manifest(ref)
    stale = tmp_path / "stale.tar.gz"
    stale.write_bytes((entry_of(store, ref) / "release.tar.gz").read_bytes())
    change_a_file_in(stale)
    with pytest.raises(TamperedRelease):
        other.put(manifest, stale)
    assert other.list() == []


def change_a_file_in(archive: Path) -> None:
    def change(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members[0] = (members[0][0], members[0][1] + b"#")

    rewrite_archive(archive, change)


def test_put_refuses_a_malformed_label(ref: str, store: LocalArtifactStore) -> None:
    """A label that reads as a digest is bad input."""
    with pytest.raises(BadInput, match="reads as a release digest"):
        store.put(store.manifest(ref), entry_of(store, ref) / "release.tar.gz", label="abcdef12")


def test_resolve_by_reference_prefix_and_label(app_dir: Path, store: LocalArtifactStore) -> None:
    """A full ref, a 6+ digit prefix with or without "sha256:", any case, or a label."""
    old = build_release(app_dir, store, label="stable")
    (app_dir / "server.py").write_text("print('v2')\n")
    new = build_release(app_dir, store, label="latest")
    hex_digest = new.removeprefix("sha256:")
    assert store.resolve(new) == new
    assert store.resolve(hex_digest[:6]) == new
    assert store.resolve("sha256:" + hex_digest[:10]) == new
    assert store.resolve(hex_digest[:8].upper()) == new
    assert store.resolve(f"  {hex_digest}  ") == new
    assert store.resolve("stable") == old
    assert store.resolve("latest") == new


def test_a_label_resolves_to_its_newest_release(app_dir: Path, store: LocalArtifactStore) -> None:
    """Labelling again moves the label, even back to an older release."""
    original = (app_dir / "server.py").read_text()
    first = build_release(app_dir, store, label="prod")
    (app_dir / "server.py").write_text("print('v2')\n")
    second = build_release(app_dir, store, label="prod")
    assert store.resolve("prod") == second
    (app_dir / "server.py").write_text(original)
    assert build_release(app_dir, store) == first
    assert store.resolve("prod") == second  # an unlabelled rebuild moves nothing
    assert build_release(app_dir, store, label="prod") == first
    assert store.resolve("prod") == first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "no release is labelled 'abc'"),
        ("abc12", "needs at least 6 hex digits"),
        ("sha256:abc", "too short"),
        ("sha256:zzzzzzzz", "is not a release digest"),
        ("ffffff", "no release in the artifact store matches"),
        ("nope", "no release is labelled 'nope'"),
    ],
)
def test_resolve_explains_what_did_not_match(
    ref: str, store: LocalArtifactStore, text: str, message: str
) -> None:
    """Unknown text is an UnknownRelease saying why."""
    if ref.removeprefix("sha256:").startswith(text):
        pytest.skip("the sample's digest happens to start with the probe")
    with pytest.raises(UnknownRelease, match=message):
        store.resolve(text)


def test_resolve_refuses_an_ambiguous_prefix(store: LocalArtifactStore) -> None:
    """Two digests sharing the prefix: the message lists both, and nothing is guessed."""
    for tail in ("0", "1"):
        (store.root / ("abcdef" + tail * 58)).mkdir(parents=True)
    with pytest.raises(UnknownRelease, match="'abcdef' is ambiguous: it matches sha256:abcdef0"):
        store.resolve("abcdef")
    assert os.listdir(store.root)  # nothing was removed


def test_an_empty_store(tmp_path: Path) -> None:
    """A store whose directory does not exist yet is simply empty."""
    store = LocalArtifactStore(tmp_path / "none")
    assert store.list() == []
    with pytest.raises(UnknownRelease):
        store.resolve("abcdef")


def test_manifest_round_trips_from_the_store(ref: str, store: LocalArtifactStore) -> None:
    """The stored manifest.json is exactly the canonical bytes."""
    data = (entry_of(store, ref) / "manifest.json").read_bytes()
    assert Manifest.from_bytes(data).canonical_bytes() == data


def test_staging_left_by_a_crashed_put_is_swept(app_dir: Path, store: LocalArtifactStore) -> None:
    """A release directory half-written before a crash is never listed and is cleared later."""
    half = store.root / ".tmp-crashed"
    half.mkdir(parents=True)
    (half / "release.tar.gz").write_bytes(b"partial")
    assert store.list() == []
    build_release(app_dir, store)
    assert not half.exists()
