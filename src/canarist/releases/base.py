"""What the platforms need from the artifact store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RunnableRelease:
    """A verified release, ready to start instances from."""

    ref: str  # "sha256:<64 hex>"
    # argv from the app's [tool.canarist.app]; "python" means the venv's own
    command: tuple[str, ...]
    health: str  # health path, e.g. "/healthz"
    venv: Path  # read-only venv built from the release's own wheels, shared by its instances


class ReleaseSource(Protocol):
    """Verifies, prepares and unpacks releases by reference; blocking, so run it in a thread."""

    def prepare(self, ref: str) -> RunnableRelease:
        """Verify the stored bytes against the digest and build (or reuse) the release's venv.

        Raises UnknownRelease or TamperedRelease; nothing is started then.
        """

    def unpack(self, ref: str, dest: Path) -> None:
        """Fresh, read-only unpack of the release's app files into `dest` (which must not exist),
        each file checked against the manifest. Raises TamperedRelease on any mismatch."""
