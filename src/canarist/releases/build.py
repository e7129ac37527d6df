"""Building a release: an app directory and all its wheels, in one reproducible archive."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from canarist.domain.release import FileEntry, Manifest, WheelEntry, check_health_path, check_label
from canarist.errors import BuildError, ConfigError
from canarist.releases.store import LocalArtifactStore
from canarist.releases.venv import last_error_line

DEFAULT_HEALTH = "/healthz"
APP_KEYS = ("command", "health")
# Never part of a release: VCS data, bytecode, local environments, canarist's own state.
IGNORED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", ".canarist"})
IGNORED_FILES = ("*.pyc",)
IGNORE_FILE = ".canaristignore"
# 1980-01-01, the earliest date a zip (so a wheel) can hold; sdists build to the same bytes.
SOURCE_DATE_EPOCH = "315532800"


@dataclass(frozen=True)
class AppConfig:
    """What an app's pyproject.toml says about running and building it."""

    command: tuple[str, ...]
    health: str
    dependencies: tuple[str, ...]  # from [project].dependencies
    requirements: Path | None  # requirements.txt, used only when [project] lists none


@dataclass(frozen=True)
class AppFile:
    """A file to archive: its path below the app root and where to read it."""

    path: str
    source: Path


def build_release(app_dir: Path, store: LocalArtifactStore, label: str | None = None) -> str:
    """Build APP_DIR into a release, store it and return its reference "sha256:<64 hex>"."""
    if label is not None:
        check_label(label)
    config = read_app_config(app_dir)
    files = collect_app_files(app_dir)
    with tempfile.TemporaryDirectory(prefix="canarist-build-") as tmp:
        wheels = resolve_wheels(config, app_dir, Path(tmp) / "wheels")
        archive = Path(tmp) / "release.tar.gz"
        file_entries, wheel_entries = write_archive(files, wheels, archive)
        try:
            manifest = Manifest(
                files=file_entries,
                wheels=wheel_entries,
                command=config.command,
                health=config.health,
            )
        except ValueError as exc:
            raise BuildError(f"cannot build {app_dir}: {exc}") from exc
        return store.put(manifest, archive, label)


def read_app_config(app_dir: Path) -> AppConfig:
    """Read [tool.canarist.app] and the dependencies; ConfigError names the file and key."""
    if not app_dir.is_dir():
        raise ConfigError(f"{app_dir}: not a directory")
    pyproject = app_dir / "pyproject.toml"
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{pyproject}: not found; an app declares [tool.canarist.app]") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot be read as TOML ({exc})") from exc

    app: Any = document
    for key in ("tool", "canarist", "app"):
        app = app.get(key) if isinstance(app, dict) else None
    if not isinstance(app, dict):
        raise ConfigError(f"{pyproject}: no [tool.canarist.app] table")
    unknown = sorted(set(app) - set(APP_KEYS))
    if unknown:
        raise ConfigError(
            f"{pyproject}: [tool.canarist.app] has unknown key {unknown[0]!r} "
            f"(valid: {', '.join(APP_KEYS)})"
        )
    command = app.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) and arg for arg in command)
    ):
        raise ConfigError(
            f"{pyproject}: [tool.canarist.app] command must be a non-empty list of strings"
        )
    health = app.get("health", DEFAULT_HEALTH)
    try:
        check_health_path(health)
    except ValueError as exc:
        raise ConfigError(f"{pyproject}: [tool.canarist.app] {exc}") from exc

    project: Any = document.get("project", {})
    dependencies = project.get("dependencies") if isinstance(project, dict) else None
    if dependencies is not None:
        if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
            raise ConfigError(f"{pyproject}: [project] dependencies must be a list of strings")
        return AppConfig(tuple(command), health, tuple(dependencies), None)
    requirements = app_dir / "requirements.txt"
    return AppConfig(tuple(command), health, (), requirements if requirements.is_file() else None)


def collect_app_files(app_dir: Path) -> list[AppFile]:
    """Every file of the app, sorted by path, minus ignored ones; symlinks are followed inside."""
    root = app_dir.resolve()
    patterns = _ignore_patterns(root)
    files = sorted(_walk(root, root, "", patterns, frozenset({root})), key=lambda f: f.path)
    return files


def resolve_wheels(config: AppConfig, app_dir: Path, wheel_dir: Path) -> list[Path]:
    """Resolve every dependency, transitively, into wheels in `wheel_dir`; BuildError on failure."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if config.dependencies:
        requirements = list(config.dependencies)
    elif config.requirements is not None:
        requirements = ["-r", str(config.requirements.resolve())]
    else:
        return []
    # pip's own configuration applies (index, find-links, certificates): build is the one step
    # that may reach an index; everything after it is offline.
    argv = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--wheel-dir",
        str(wheel_dir),
        "--no-input",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        *requirements,
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    try:
        proc = subprocess.run(
            argv, cwd=app_dir, env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise BuildError(f"cannot run pip to resolve the dependencies of {app_dir}: {exc}") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"cannot resolve the dependencies of {app_dir}: {last_error_line(proc.stderr)}"
        )
    return sorted(wheel_dir.glob("*.whl"))


def write_archive(
    files: list[AppFile], wheels: list[Path], archive: Path
) -> tuple[tuple[FileEntry, ...], tuple[WheelEntry, ...]]:
    """Write the normalized archive and return the entries hashed from the very bytes written."""
    file_entries: list[FileEntry] = []
    wheel_entries: list[WheelEntry] = []
    try:
        with (
            open(archive, "wb") as raw,
            # No name and mtime 0 in the gzip header, so equal content gives equal bytes.
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for app_file in files:
                with open(app_file.source, "rb") as source:
                    st = os.fstat(source.fileno())
                    mode = 0o755 if st.st_mode & 0o111 else 0o644
                    digest = _add_member(tar, f"app/{app_file.path}", mode, st.st_size, source)
                file_entries.append(FileEntry(app_file.path, digest, mode, st.st_size))
            for wheel in sorted(wheels, key=lambda w: w.name):
                with open(wheel, "rb") as source:
                    size = os.fstat(source.fileno()).st_size
                    digest = _add_member(tar, f"wheels/{wheel.name}", 0o644, size, source)
                wheel_entries.append(WheelEntry(wheel.name, digest))
    except OSError as exc:
        # Also raised by tarfile when a file shrinks between stat and read.
        raise BuildError(f"cannot write the release archive: {exc}") from exc
    return tuple(file_entries), tuple(wheel_entries)


def _add_member(tar: tarfile.TarFile, name: str, mode: int, size: int, source: IO[bytes]) -> str:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    reader = _HashingReader(source)
    tar.addfile(info, reader)
    return reader.digest.hexdigest()


class _HashingReader:
    """A file wrapper that hashes what tarfile reads, so the manifest matches the archive."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.digest.update(data)
        return data


def _ignore_patterns(root: Path) -> list[str]:
    try:
        text = (root / IGNORE_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{root / IGNORE_FILE}: cannot be read ({exc})") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str, is_dir: bool, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    if is_dir and name in IGNORED_DIRS:
        return True
    if not is_dir and any(fnmatch.fnmatchcase(name, p) for p in IGNORED_FILES):
        return True
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        # "/x" anchors at the app root; a pattern with no "/" matches a name at any depth.
        anchored = pattern.startswith("/") or "/" in pattern
        pattern = pattern.lstrip("/")
        if fnmatch.fnmatchcase(path, pattern) or (
            not anchored and fnmatch.fnmatchcase(name, pattern)
        ):
            return True
    return False


def _walk(
    root: Path, directory: Path, prefix: str, patterns: list[str], ancestors: frozenset[Path]
) -> Iterator[AppFile]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise BuildError(f"cannot read {directory}: {exc}") from exc
    for entry in entries:
        path = prefix + entry.name
        try:
            path.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BuildError(f"{root}: file name {path!r} is not UTF-8") from exc
        source = Path(entry.path)
        if entry.is_symlink():
            try:
                target = source.resolve()
            except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links
                raise BuildError(f"{source} is a symlink that cannot be followed") from exc
            if not target.is_relative_to(root):
                raise BuildError(f"{source} is a symlink pointing outside the app directory")
            if not target.exists():
                raise BuildError(f"{source} is a broken symlink")
        else:
            target = source
        is_dir = target.is_dir()
        if _ignored(path, is_dir, patterns):
            continue
        if is_dir:
            # A link back to a directory being walked would never end.
            if target in ancestors:
                raise BuildError(f"{source} is a symlink loop")
            yield from _walk(root, target, path + "/", patterns, ancestors | {target})
        elif target.is_file():
            yield AppFile(path, target)
        else:
            raise BuildError(f"{source} is not a regular file or directory")
