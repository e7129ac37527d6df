"""A release as a Lambda deployment package: its app files at the zip's root and its
dependencies installed beside them from the release's own wheels, with no index.

The zip is made from the verified release, with sorted entries and fixed times, so the
same release always gives the same bytes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from canarist.errors import BuildError
from canarist.releases.store import LocalArtifactStore

PACKAGE = "lambda.zip"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def lambda_package(store: LocalArtifactStore, ref: str) -> bytes:
    """The release's Lambda zip (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="canarist-lambda-") as tmp:
        root = Path(tmp)
        app, deps, wheels = root / "app", root / "deps", root / "wheels"
        store.unpack(ref, app)
        wheels.mkdir()
        found = store.extract_wheels(ref, wheels)
        if found:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--isolated",
                    "--no-index",
                    "--no-deps",
                    "--no-compile",
                    "--target",
                    str(deps),
                    *map(str, found),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise BuildError(f"cannot install {ref[:19]}'s wheels for Lambda: {tail}")
        files: dict[str, Path] = {}
        for base in (deps, app):  # the app's own files win over a dependency's
            if base.exists():
                for path in base.rglob("*"):
                    # pip's install records name the temporary wheel path: left out, so the
                    # same release gives the same bytes (Lambda never uninstalls anything).
                    if path.name in ("direct_url.json", "RECORD") and base == deps:
                        continue
                    if path.is_file() and "__pycache__" not in path.parts:
                        files[path.relative_to(base).as_posix()] = path
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, _FIXED_TIME)
                executable = os.access(files[name], os.X_OK)
                info.external_attr = (0o755 if executable else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name].read_bytes())
        return buffer.getvalue()
