"""Building releases: reproducible digests, the app config, what goes into the archive."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from canarist.errors import BuildError, ConfigError
from canarist.releases.build import build_release, read_app_config
from canarist.releases.store import LocalArtifactStore


def test_building_twice_gives_the_same_reference(app_dir: Path, store: LocalArtifactStore) -> None:
    """The same directory built twice is the same release."""
    assert build_release(app_dir, store) == build_release(app_dir, store)
    assert len(store.list()) == 1


def test_copies_of_an_app_give_the_same_reference(
    tmp_path: Path, make_app: Callable[..., Path], make_store: Callable[[str], LocalArtifactStore]
) -> None:
    """Timestamps, owner-only permissions and the directory's location do not enter the digest."""
    first = make_app(tmp_path / "one" / "app")
    second = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, second)
    for path in second.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (second / "server.py").chmod(0o600)  # no exec bit either way: still 0o644 in the release
    (second / "bin" / "start.sh").chmod(0o700)  # an exec bit either way: still 0o755
    assert build_release(first, make_store("a")) == build_release(second, make_store("b"))


def test_one_changed_byte_changes_the_reference(app_dir: Path, store: LocalArtifactStore) -> None:
    """Any content change is a new release."""
    before = build_release(app_dir, store)
    server = app_dir / "server.py"
    server.write_bytes(server.read_bytes().replace(b"ok", b"OK"))
    assert build_release(app_dir, store) != before


def test_an_exec_bit_changes_the_reference(app_dir: Path, store: LocalArtifactStore) -> None:
    """Making a file executable is a new release, since instances run it differently."""
    before = build_release(app_dir, store)
    (app_dir / "server.py").chmod(0o755)
    assert build_release(app_dir, store) != before


def test_the_label_is_not_part_of_the_digest(app_dir: Path, store: LocalArtifactStore) -> None:
    """Labels are store metadata: one release may carry several."""
    first = build_release(app_dir, store, label="v1")
    second = build_release(app_dir, store, label="candidate")
    assert first == second
    assert store.list()[0].labels == ("v1", "candidate")


def test_clutter_and_ignored_files_are_left_out(ref: str, store: LocalArtifactStore) -> None:
    """VCS data, bytecode, venvs, canarist state and .canaristignore matches are not shipped."""
    assert [f.path for f in store.manifest(ref).files] == [
        ".canaristignore",
        "bin/start.sh",
        "lib/greeting.py",
        "pyproject.toml",
        "server.py",
    ]


def test_the_archive_is_normalized(ref: str, store: LocalArtifactStore) -> None:
    """Sorted entries, mtime 0, root owner with no names, modes 0o644/0o755, gzip mtime 0."""
    archive = store.root / ref.removeprefix("sha256:") / "release.tar.gz"
    assert archive.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.uname == "" and m.gname == "" for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["app/bin/start.sh"] == 0o755
    assert modes["app/server.py"] == 0o644


def test_files_linked_inside_the_app_are_shipped_as_files(
    app_dir: Path, store: LocalArtifactStore
) -> None:
    """A symlink to a file inside the app becomes a regular file with the target's bytes."""
    (app_dir / "main.py").symlink_to("server.py")
    manifest = store.manifest(build_release(app_dir, store))
    entries = {f.path: f for f in manifest.files}
    assert entries["main.py"].sha256 == entries["server.py"].sha256


def test_a_symlink_out_of_the_app_is_refused(
    tmp_path: Path, app_dir: Path, store: LocalArtifactStore
) -> None:
    """A link to a file outside the app would ship bytes nobody reviewed."""
    (tmp_path / "outside.txt").write_text("secret\n")
    (app_dir / "lib" / "leak.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(BuildError, match="symlink pointing outside the app directory"):
        build_release(app_dir, store)
    assert store.list() == []


def test_a_symlink_loop_is_refused(app_dir: Path, store: LocalArtifactStore) -> None:
    """A directory linking to its own parent would never end."""
    (app_dir / "lib" / "again").symlink_to(app_dir / "lib")
    with pytest.raises(BuildError, match="loop"):
        build_release(app_dir, store)


APP = '[tool.canarist.app]\ncommand = ["python", "server.py"]\n'


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("", "[tool.canarist.app]"),
        ("[tool.canarist]\napp = 1\n", "[tool.canarist.app]"),
        ("[tool]\ncanarist = 1\n", "[tool.canarist.app]"),
        ('[tool.canarist.app]\nhealth = "/healthz"\n', "command"),
        ('[tool.canarist.app]\ncommand = "python server.py"\n', "command"),
        ("[tool.canarist.app]\ncommand = []\n", "command"),
        ('[tool.canarist.app]\ncommand = ["python", 1]\n', "command"),
        (APP + 'health = "healthz"\n', "health"),
        (APP + "health = 8080\n", "health"),
        (APP + "helath = '/healthz'\n", "helath"),
        ("[tool.canarist.app\n", "TOML"),
    ],
    ids=[
        "no-table",
        "not-a-table",
        "canarist-not-a-table",
        "no-command",
        "command-string",
        "command-empty",
        "command-not-strings",
        "health-relative",
        "health-number",
        "unknown-key",
        "bad-toml",
    ],
)
def test_a_malformed_app_table_is_a_config_error(
    app_dir: Path, store: LocalArtifactStore, table: str, key: str
) -> None:
    """One line naming the file and the key, and nothing stored."""
    (app_dir / "pyproject.toml").write_text(table)
    with pytest.raises(ConfigError) as caught:
        build_release(app_dir, store)
    message = str(caught.value)
    assert "\n" not in message
    assert str(app_dir / "pyproject.toml") in message
    assert key in message
    assert store.list() == []


def test_a_missing_pyproject_is_a_config_error(tmp_path: Path, store: LocalArtifactStore) -> None:
    """A directory without pyproject.toml is not an app."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"pyproject\.toml: not found"):
        build_release(tmp_path / "empty", store)


def test_a_missing_directory_is_a_config_error(tmp_path: Path, store: LocalArtifactStore) -> None:
    """Building a path that is not a directory is bad input."""
    with pytest.raises(ConfigError, match="not a directory"):
        build_release(tmp_path / "nowhere", store)


def test_health_defaults_to_healthz(app_dir: Path) -> None:
    """Without `health`, the app is checked at /healthz."""
    (app_dir / "pyproject.toml").write_text(APP)
    assert read_app_config(app_dir).health == "/healthz"


def test_project_dependencies_win_over_requirements_txt(
    app_dir: Path, make_app: Callable[..., Path]
) -> None:
    """[project].dependencies is used when present; requirements.txt otherwise."""
    (app_dir / "requirements.txt").write_text("six==1.16.0\n")
    assert read_app_config(app_dir).requirements == app_dir / "requirements.txt"
    make_app(app_dir, dependencies=["six==1.16.0"])
    config = read_app_config(app_dir)
    assert config.dependencies == ("six==1.16.0",)
    assert config.requirements is None


def test_an_app_without_dependencies_needs_no_index(
    app_dir: Path, store: LocalArtifactStore, offline: list[str]
) -> None:
    """A stdlib-only app builds with the network cut: pip is not even run."""
    code = (
        "import sys; from pathlib import Path;"
        "from canarist.releases.build import build_release;"
        "from canarist.releases.store import LocalArtifactStore;"
        "print(build_release(Path(sys.argv[1]), LocalArtifactStore(Path(sys.argv[2]))))"
    )
    out = subprocess.run(
        [*offline, sys.executable, "-c", code, str(app_dir), str(store.root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == build_release(app_dir, store)
    assert store.manifest(out.stdout.strip()).wheels == ()


@pytest.mark.network
def test_dependencies_are_vendored_reproducibly(
    tmp_path: Path,
    make_app: Callable[..., Path],
    make_store: Callable[[str], LocalArtifactStore],
    six_release: tuple[LocalArtifactStore, str],
) -> None:
    """The wheels are in the release, and a rebuild elsewhere gives the same reference."""
    store, ref = six_release
    assert [w.filename for w in store.manifest(ref).wheels] == ["six-1.16.0-py2.py3-none-any.whl"]
    app = make_app(tmp_path / "again", dependencies=["six==1.16.0"])
    (app / "server.py").write_text("import six\n\nprint(six.__version__)\n")
    assert build_release(app, make_store("again")) == ref


@pytest.mark.network
def test_requirements_txt_is_resolved(app_dir: Path, store: LocalArtifactStore) -> None:
    """Without [project].dependencies, requirements.txt beside the pyproject is used."""
    (app_dir / "requirements.txt").write_text("six==1.16.0\n")
    ref = build_release(app_dir, store)
    assert [w.filename for w in store.manifest(ref).wheels] == ["six-1.16.0-py2.py3-none-any.whl"]


@pytest.mark.network
def test_an_unresolvable_dependency_is_a_build_error(
    make_app: Callable[..., Path], tmp_path: Path, store: LocalArtifactStore
) -> None:
    """pip's own last error line is in the one-line message, and nothing is stored."""
    app = make_app(tmp_path / "app", dependencies=["canarist-no-such-package-zz==0.0.1"])
    with pytest.raises(BuildError) as caught:
        build_release(app, store)
    message = str(caught.value)
    assert "\n" not in message
    assert "canarist-no-such-package-zz" in message
    assert "ERROR:" in message
    assert store.list() == []


def test_archive_bytes_are_reproducible(
    app_dir: Path, make_store: Callable[[str], LocalArtifactStore]
) -> None:
    """Not only the digest: two builds write byte-identical archives."""
    first, second = make_store("a"), make_store("b")
    ref = build_release(app_dir, first)
    build_release(app_dir, second)
    hex_digest = ref.removeprefix("sha256:")
    archives = [s.root / hex_digest / "release.tar.gz" for s in (first, second)]
    assert archives[0].read_bytes() == archives[1].read_bytes()
    with gzip.open(archives[0]) as gz:
        assert gz.read()  # a well-formed gzip stream
