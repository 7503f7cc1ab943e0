"""Run records on disk: one JSON file per run, written atomically, never lost.

Layout under a results folder::

    runs/<run-id>.json          the record of a run (status "done" or "failed")
    runs/.locks/<run-id>.lock   held (flock) by the process running that run
    runs/superseded/            finished records replaced by ``--force`` (kept, never deleted)
    runs/unreadable/            truncated or corrupt records moved aside by ``run``

Writes go to a temporary file in the same folder and are renamed over the target, so a reader
sees the old record or the new one, never a mix. Two processes on one folder coordinate with
a per-run lock: the second sees the run as busy and skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

RECORD_KEYS = ("run_id", "status", "config")


class RecordWarning(UserWarning):
    """A record in the results folder that cannot be read."""


class UnreadableRecord(Exception):
    """Raised internally when a record file is truncated, not JSON, or lacks its keys."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableRecord(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or any(k not in data for k in RECORD_KEYS):
        raise UnreadableRecord("not a hashbench run record (missing run_id, status or config)")
    return data


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunStore:
    """The run records of one results folder."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)
        self.runs_dir = self.results_dir / "runs"

    def path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def _move_aside(self, path: Path, folder: str) -> Path:
        target_dir = self.runs_dir / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = target_dir / f"{path.stem}.{stamp}{path.suffix}"
        n = 1
        while target.exists():
            target = target_dir / f"{path.stem}.{stamp}-{n}{path.suffix}"
            n += 1
        os.replace(path, target)
        return target

    def read(self, run_id: str) -> dict[str, Any] | None:
        """The record of ``run_id``, or None if there is none.

        An unreadable record is moved to ``runs/unreadable/`` (never deleted) with a
        RecordWarning naming it; then None. Call it while holding the run's claim.
        """
        path = self.path(run_id)
        if not path.exists():
            return None
        try:
            return _read_json(path)
        except UnreadableRecord as exc:
            target = self._move_aside(path, "unreadable")
            warnings.warn(f"unreadable record {path} ({exc}); moved to {target}", RecordWarning, stacklevel=2)
            return None

    def peek(self, run_id: str) -> dict[str, Any] | None:
        """The record of ``run_id`` if there is a readable one; reads only, moves nothing.

        An unreadable record gives a RecordWarning naming it, then None.
        """
        path = self.path(run_id)
        if not path.exists():
            return None
        try:
            return _read_json(path)
        except UnreadableRecord as exc:
            warnings.warn(f"unreadable record {path} ({exc}); skipped", RecordWarning, stacklevel=2)
            return None

    def is_done(self, run_id: str) -> bool:
        """Whether a readable record with status ``done`` exists (reads only; moves nothing)."""
        path = self.path(run_id)
        try:
            return path.exists() and _read_json(path).get("status") == "done"
        except UnreadableRecord:
            return False

    def write(self, record: dict[str, Any]) -> Path:
        """Store ``record`` atomically; a finished record it replaces goes to ``runs/superseded/``."""
        path = self.path(record["run_id"])
        if path.exists():
            try:
                previous = _read_json(path)
            except UnreadableRecord:
                previous = None
                self._move_aside(path, "unreadable")
            if previous is not None and previous.get("status") == "done":
                self._move_aside(path, "superseded")
        atomic_write_json(path, record)
        return path

    @contextlib.contextmanager
    def claim(self, run_id: str) -> Iterator[bool]:
        """Hold the run's lock for the ``with`` block; yields False if another process holds it.

        The lock is an flock on ``runs/.locks/<run-id>.lock``: the kernel releases it when the
        holder exits or dies, so a killed worker never leaves a run locked.
        """
        lock_dir = self.runs_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{run_id}.lock", "a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, sorted by run id; each unreadable one gives a RecordWarning."""
        out = []
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                out.append(_read_json(path))
            except UnreadableRecord as exc:
                warnings.warn(f"unreadable record {path} ({exc}); skipped", RecordWarning, stacklevel=2)
        return out
