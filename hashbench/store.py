"""Run records on disk: one JSON file per run, written atomically, never lost.

Layout under a results folder::

    runs/<run-id>.json          the record of a run (status "done" or "failed")
    runs/.locks/<run-id>.lock   held (flock) by the process running that run
    runs/superseded/            finished records replaced by ``--force`` (kept, never deleted)
    runs/unreadable/            truncated, corrupt or invalid records moved aside by ``run``

Writes go to a temporary file in the same folder and are renamed over the target, so a reader
sees the old record or the new one, never a mix. Two processes on one folder coordinate with
a per-run lock: the second sees the run as busy and skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from .errors import HashbenchError

RECORD_KEYS = ("run_id", "status", "config")
STATUSES = ("done", "failed")
#: the scalar metrics of a done record (means over queries); ``metrics.topk`` is K of mAP@K
METRICS = ("map", "map_full", "map_tie_aware", "precision_h2", "recall_h2")
#: the curves of a done record and the lists each holds (of equal length)
CURVES = {"pr_curve": ("radius", "precision", "recall"), "precision_at_k": ("k", "precision")}


class RecordWarning(UserWarning):
    """A record in the results folder that cannot be read."""


class UnreadableRecord(Exception):
    """Raised internally when a record file is truncated, not JSON, or not a valid record."""


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_record(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it is a valid run record stored at ``path``, else :class:`UnreadableRecord`
    saying why. The schema: ``run_id`` (the file's name, and the hash of ``config``), ``status``
    ("done" or "failed"), ``config`` (method, dataset, bits, seed and their parameter dicts); a
    done record has every metric of METRICS as a finite number, ``metrics.topk`` a whole
    number or null, and CURVES as lists of finite numbers of equal length; a failed one an
    ``error`` text; ``seconds``, where present, a finite number >= 0 or null."""
    from .config import run_id_of

    def bad(why: str) -> None:
        raise UnreadableRecord(why)

    if not isinstance(data, dict) or any(k not in data for k in RECORD_KEYS):
        bad("not a hashbench run record (missing run_id, status or config)")
    if data["run_id"] != path.stem:
        bad(f"its run_id {data['run_id']!r} is not its file name")
    if data["status"] not in STATUSES:
        bad(f"status {data['status']!r} is neither done nor failed")
    config = data["config"]
    if not isinstance(config, dict):
        bad("config is not a mapping")
    for key in ("method", "dataset"):
        if not isinstance(config.get(key), str) or not config[key]:
            bad(f"config.{key} is not a name")
    for key in ("bits", "seed"):
        if not _whole(config.get(key)) or config[key] < 0:
            bad(f"config.{key} is not a whole number")
    for key in ("method_params", "dataset_params", "features"):
        if not isinstance(config.get(key, {}), dict):
            bad(f"config.{key} is not a mapping")
    if run_id_of(config) != data["run_id"]:
        bad("its config does not hash to its run id (edited by hand?)")
    seconds = data.get("seconds")
    if seconds is not None and not (_number(seconds) and seconds >= 0):
        bad(f"seconds is {seconds!r}, not a number >= 0")
    if data["status"] == "failed":
        if not isinstance(data.get("error"), str):
            bad("a failed record without its error text")
        return data
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        bad("a done record without metrics")
    for name in METRICS:
        if not _number(metrics.get(name)):
            bad(f"metric {name} is {metrics.get(name)!r}, not a finite number")
    if metrics.get("topk") is not None and not (_whole(metrics["topk"]) and metrics["topk"] > 0):
        bad(f"metrics.topk is {metrics['topk']!r}, not a whole number > 0")
    curves = data.get("curves")
    if not isinstance(curves, dict):
        bad("a done record without curves")
    for name, lists in CURVES.items():
        curve = curves.get(name)
        if not isinstance(curve, dict) or not all(isinstance(curve.get(k), list) for k in lists):
            bad(f"curve {name} lacks its lists ({', '.join(lists)})")
        if len({len(curve[k]) for k in lists}) != 1 or not all(_number(v) for k in lists for v in curve[k]):
            bad(f"curve {name} holds lists of unequal length or values that are not finite numbers")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableRecord(f"{type(exc).__name__}: {exc}") from None
    return check_record(data, path)


def is_record_file(path: Path) -> bool:
    """Only ``<run-id>.json`` files are records: never the temporary ``.tmp-*.json`` of a write."""
    return path.suffix == ".json" and not path.name.startswith(".")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename):
    a reader sees the old file or the new one, never a part; on any error (a full disk) the old
    file is left as it was and the temporary one removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # say which file (a full disk)
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


class RunStore:
    """The run records of one results folder."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)
        self.runs_dir = self.results_dir / "runs"

    def check_writable(self) -> None:
        """A one-line HashbenchError naming the path when records cannot be written here (a
        read-only folder, a file where the folder should be), before any run starts."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.runs_dir):
                pass
        except OSError as exc:
            where = exc.filename or self.runs_dir
            raise HashbenchError(f"cannot write run records to {self.runs_dir}: {exc.strerror} ({where})") from None

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

    def existing_records(self) -> list[dict[str, Any]]:
        """:meth:`records`, for a command that reads a folder (``table``, ``plot``, ``report``):
        a one-line HashbenchError, and nothing created, when it holds no valid record."""
        if not self.runs_dir.is_dir():
            raise HashbenchError(
                f"no run records in {self.results_dir}: {self.runs_dir} is not a folder "
                "(`hashbench run` writes it; --results-dir names another folder)"
            )
        records = self.records()
        if not records:
            raise HashbenchError(f"no valid run records in {self.runs_dir}")
        return records

    def records(self) -> list[dict[str, Any]]:
        """Every valid record, sorted by run id (one per run: a record is its file
        ``<run-id>.json``); each unreadable or invalid one gives a RecordWarning and is skipped."""
        out = []
        for path in sorted(p for p in self.runs_dir.glob("*.json") if is_record_file(p)):
            try:
                out.append(_read_json(path))
            except UnreadableRecord as exc:
                warnings.warn(f"unreadable record {path} ({exc}); skipped", RecordWarning, stacklevel=2)
        return out
