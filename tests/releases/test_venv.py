"""The per-release venv: built offline from the release's own wheels, cached, read-only."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from canarist.releases.store import LocalArtifactStore

PREPARE_AND_PROBE = """
import socket, sys
from pathlib import Path
from canarist.releases.store import LocalArtifactStore

# Prove the network really is gone before trusting the result.
try:
    socket.create_connection(("1.1.1.1", 443), timeout=2)
    sys.exit("the network is reachable")
except OSError:
    pass
store = LocalArtifactStore(Path(sys.argv[1]), venv_root=Path(sys.argv[2]))
print(store.prepare(sys.argv[3]).venv)
"""


def test_prepare_builds_a_read_only_venv(ref: str, store: LocalArtifactStore) -> None:
    """A stdlib-only release gets a plain venv whose python runs; nothing in it is writable."""
    runnable = store.prepare(ref)
    assert runnable.ref == ref
    assert runnable.command == ("python", "server.py")
    assert runnable.health == "/healthz"
    assert runnable.venv == store.venvs.path(ref)
    assert runnable.venv.parent == store.root.parent / "venvs"
    out = subprocess.run(
        [str(runnable.venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(runnable.venv)
    for path in [runnable.venv, *runnable.venv.rglob("*")]:
        if not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, path


def test_a_prepared_venv_is_reused(ref: str, store: LocalArtifactStore) -> None:
    """The second prepare finds the venv in place and builds nothing."""
    first = store.prepare(ref).venv
    marker = (first / "pyvenv.cfg").stat().st_ino
    assert store.prepare(ref).venv == first
    assert (first / "pyvenv.cfg").stat().st_ino == marker


def test_concurrent_prepares_build_once(ref: str, store: LocalArtifactStore) -> None:
    """Threads preparing the same release all get the one venv, and no staging is left."""
    results: list[Path] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            results.append(store.prepare(ref).venv)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {store.venvs.path(ref)}
    leftovers = [p.name for p in store.venvs.root.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [ref.removeprefix("sha256:")]


def test_a_broken_venv_is_rebuilt(ref: str, store: LocalArtifactStore) -> None:
    """A venv without a working python (its base interpreter gone) is replaced, not repaired."""
    broken = store.venvs.path(ref)
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "python").symlink_to("/nonexistent/python3")
    venv = store.prepare(ref).venv
    assert venv == broken
    assert (venv / "bin" / "python").exists()


def test_the_venv_root_is_configurable(tmp_path: Path, ref: str, store: LocalArtifactStore) -> None:
    """Venvs may live apart from the artifacts."""
    elsewhere = LocalArtifactStore(store.root, venv_root=tmp_path / "cache")
    assert elsewhere.prepare(ref).venv.parent == tmp_path / "cache"


@pytest.mark.network
def test_dependencies_install_with_the_network_cut(
    tmp_path: Path, six_release: tuple[LocalArtifactStore, str], offline: list[str]
) -> None:
    """The venv is built from the release's own wheels inside `unshare -n`, and six imports."""
    store, ref = six_release
    venv_root = tmp_path / "venvs"
    out = subprocess.run(
        [*offline, sys.executable, "-c", PREPARE_AND_PROBE, str(store.root), str(venv_root), ref],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    venv = Path(out.stdout.strip())
    assert venv.parent == venv_root
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import six; print(six.__version__, six.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    version, location = probe.stdout.split()
    assert version == "1.16.0"
    assert Path(location).is_relative_to(venv)
    # Only the release's wheels: no pip, no setuptools slipped in.
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = sorted(p.name.split("-")[0] for p in site.glob("*.dist-info"))
    assert installed == ["six"]
    # Scripts and activation files name the final path, not the staging one.
    assert ".tmp-" not in (venv / "bin" / "activate").read_text()


def test_staging_left_by_a_crashed_build_is_swept(ref: str, store: LocalArtifactStore) -> None:
    """A half-built venv from a killed build never becomes the venv and does not linger."""
    tag = ref.removeprefix("sha256:")[:16]
    half = store.venvs.root / f".tmp-{tag}-crashed"
    (half / "bin").mkdir(parents=True)
    venv = store.prepare(ref).venv
    assert not half.exists()
    assert (venv / "bin" / "python").exists()
