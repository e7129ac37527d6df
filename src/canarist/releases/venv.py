"""One read-only virtual environment per release, built offline from the release's own wheels."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from canarist.domain.release import reference_hex, short_reference
from canarist.errors import BuildError


class VenvCache:
    """Builds and keeps one venv per release under `root`; safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, ref: str) -> Path:
        """Where the venv of `ref` lives once built."""
        return self.root / reference_hex(ref)

    def ensure(self, ref: str, extract_wheels: Callable[[Path], Sequence[Path]]) -> Path:
        """Return the venv of `ref`, building it first if needed.

        `extract_wheels(dir)` writes the release's verified wheels into `dir` and returns them.
        """
        final = self.path(ref)
        if _usable(final):
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / f".{final.name}.lock"):
            # Another thread or process may have finished it while we waited for the lock.
            if _usable(final):
                return final
            if final.exists() or final.is_symlink():
                # Its base interpreter is gone (e.g. Python was reinstalled): build it afresh.
                _discard(final)
            # Holding this release's lock, any staging left for it is from a crashed build.
            tag = final.name[:16]
            for stale in self.root.glob(f".*-{tag}-*"):
                remove_tree(stale)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{tag}-", dir=self.root))
            try:
                with tempfile.TemporaryDirectory(
                    prefix=f".wheels-{tag}-", dir=self.root
                ) as wheel_dir:
                    wheels = extract_wheels(Path(wheel_dir))
                    build_venv(staging, wheels, ref=ref)
                _relocate(staging, final)
                make_read_only(staging)
                # The rename is the commit point: a crash before it leaves only a .tmp- dir.
                os.rename(staging, final)
                fsync_dir(self.root)
            except BaseException:
                remove_tree(staging)
                raise
        return final


def build_venv(dest: Path, wheels: Sequence[Path], *, ref: str) -> None:
    """Create a venv at `dest` and install exactly `wheels` into it, with no package index."""
    prompt = f"canarist-{reference_hex(ref)[:12]}"
    _run([sys.executable, "-m", "venv", "--without-pip", "--prompt", prompt, str(dest)], ref)
    if not wheels:
        return
    # pip runs from canarist's own environment against the new interpreter, so the venv
    # needs no pip of its own; --isolated ignores user config and PIP_* (an index, a proxy).
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(dest / "bin" / "python"),
            "install",
            "--no-index",
            "--isolated",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--no-warn-script-location",
            *(str(w) for w in sorted(wheels)),
        ],
        ref,
    )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`; each call opens its own descriptor, so threads wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def make_read_only(root: Path) -> None:
    """Drop every write bit in the tree: files 0o444 (0o555 if executable), dirs 0o555."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            # chmod follows symlinks, and the venv's bin/python links to the base interpreter.
            if stat.S_ISLNK(st.st_mode):
                continue
            executable = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111
            os.chmod(path, 0o555 if executable else 0o444)
    os.chmod(root, 0o555)


def remove_tree(root: Path) -> None:
    """Remove a tree that may have been made read-only; a missing tree is not an error."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, _ in os.walk(root):
            os.chmod(dirpath, 0o755)
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755)
        shutil.rmtree(root)
    else:
        root.unlink()


def _usable(venv: Path) -> bool:
    # bin/python links to the base interpreter; exists() follows the link.
    return (venv / "bin" / "python").exists()


def _discard(path: Path) -> None:
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name[:16]}-", dir=path.parent))
    os.rename(path, trash / path.name)
    remove_tree(trash)


def _relocate(staging: Path, final: Path) -> None:
    """Point scripts and activation files at the venv's final path instead of its staging path."""
    old, new = os.fsencode(staging), os.fsencode(final)
    candidates = [p for p in (staging / "bin").iterdir() if p.is_file() and not p.is_symlink()]
    candidates.append(staging / "pyvenv.cfg")
    for path in candidates:
        data = path.read_bytes()
        if old in data and b"\x00" not in data:
            path.write_bytes(data.replace(old, new))


def _run(argv: list[str], ref: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BuildError(f"cannot build the venv of {short_reference(ref)}: {exc}") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"cannot build the venv of {short_reference(ref)}: {last_error_line(proc.stderr)}"
        )


def last_error_line(output: str) -> str:
    """The telling line of a failed pip or venv run: its last ERROR line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "no output"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
