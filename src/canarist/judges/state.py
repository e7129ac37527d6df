"""A judge's analysis saved and taken up again: what lets a restarted controller skip
replaying hours of evidence.

A long rollout (a canary held at a manual gate over a weekend) is judged all along, and
its evidence is stored four times a second; a controller that restarts replays it through
the judge, which costs seconds per hour of evidence (the latencies most of it) while the
controller does nothing else. So every few minutes the analysis itself is saved, and a
restart takes it up and replays only what came after.

The analysis is pickled, and read back by an unpickler that builds nothing but the
judges' own classes (and `collections.deque`): a pickle is a program, and one that names
any other callable (`os.system`, say) is refused rather than run, as the `pickle` module's
documentation advises ("Restricting Globals"). A saved analysis is tied to the judge, its
settings and the canarist version that wrote it (`state_key`): when any of them differ it
is not used.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
from collections import deque
from collections.abc import Mapping

from canarist import __version__
from canarist.errors import CanaristError
from canarist.judges.base import Analysis, Verdict

_JUDGE_MODULES = (
    "canarist.judges.base",
    "canarist.judges.mann_whitney",
    "canarist.judges.sequential",
    "canarist.judges.threshold",
)


class StateError(CanaristError):
    """A saved analysis that cannot be taken up: unreadable, or not a judge's."""


def state_key(judge: str, settings: Mapping[str, object]) -> str:
    """What a saved analysis must match to be taken up: judge, settings and version."""
    return json.dumps(
        {"judge": judge, "settings": dict(settings), "canarist": __version__},
        sort_keys=True,
        default=str,
    )


def save(analysis: Analysis, verdict: Verdict | None) -> bytes:
    """The analysis and its latest verdict, as bytes for the store."""
    return pickle.dumps((analysis, verdict), protocol=pickle.HIGHEST_PROTOCOL)


def load(blob: bytes) -> tuple[Analysis, Verdict | None]:
    """The analysis and verdict `save` gave these bytes; StateError if they are not that."""
    try:
        analysis, verdict = _JudgeUnpickler(io.BytesIO(blob)).load()
    except StateError:
        raise
    except Exception as exc:  # a truncated or foreign pickle fails in many ways
        raise StateError(f"unreadable saved analysis: {exc}") from exc
    if not hasattr(analysis, "update") or not isinstance(verdict, Verdict | None):
        raise StateError("the saved state is not a judge's analysis")
    return analysis, verdict


class _JudgeUnpickler(pickle.Unpickler):
    """Builds the judges' classes and deques, and refuses every other global."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("collections", "deque"):
            return deque
        if module in _JUDGE_MODULES:
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type):
                return found
        raise StateError(f"a saved analysis may not name {module}.{name}")
