"""Run records on disk: one JSON file per run, written atomically, never lost.

Layout under a results folder::

    runs/<run-id>.json          the record of a run (status "done" or "failed")
    runs/<run-id>.queries.npz   a done run's per-query values (:mod:`hashbench.queries`)
    runs/.locks/<run-id>.lock   held (flock) by the process running that run
    runs/superseded/            finished records replaced by ``--force`` (kept, never deleted)
    runs/unreadable/            truncated, corrupt or invalid records moved aside by ``run``

Writes go to a temporary file in the same folder and are renamed over the target, so a reader
sees the old record or the new one, never a mix. Two processes on one folder coordinate with
a per-run lock: the second sees the run as busy and skips it.

A record is a :class:`RunRecord` (version :data:`RECORD_VERSION`; its JSON layout is described
in results/README.md). It is written in one place, :meth:`RunStore.write`, and read in one
place, :func:`load_record`: every reader (``read``, ``peek``, ``records``, ``snapshot``)
validates it (:func:`check_record`) and brings a record of an older version up to date
(:func:`migrate`). Tables and plots label and group runs from what the record stored (its
:class:`RunLabel`), never from the defaults of the day they are drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HashbenchError
from .queries import QueriesError, QueryValues, check_entry, sha256, sidecar_name

#: the version of the record layout this hashbench writes; records without ``record_version``
#: are version 0 (before the RunRecord schema) and are migrated when read (:func:`migrate`)
RECORD_VERSION = 1
RECORD_KEYS = ("run_id", "status", "config")
STATUSES = ("done", "failed")
#: THE metrics of a done record (means over queries), each with its name in plots and pages;
#: ``metrics.topk`` is K of mAP@K. Every list of metric names in hashbench derives from this one.
METRIC_LABELS = {
    "map": "mAP@K",
    "map_full": "mAP over the whole ranking",
    "map_tie_aware": "tie-aware mAP over the whole ranking",
    "precision_h2": "precision within Hamming radius 2",
    "recall_h2": "recall within Hamming radius 2",
}
METRICS = tuple(METRIC_LABELS)
#: what a done record's ``metrics`` holds: the metrics and K of mAP@K
RECORD_METRICS = (*METRICS, "topk")
#: the curves of a done record and the lists each holds (of equal length)
CURVES = {"pr_curve": ("radius", "precision", "recall"), "precision_at_k": ("k", "precision")}
#: method parameters that name a deep method's input (its backbone): a run's table column
INPUT_KEYS = ("backbone", "pretrained", "input_size", "frozen")
#: the suffix of a run's saved fitted method, beside its record (see RunStore.model_bytes)
MODEL_SUFFIX = ".model.pt"
#: what a done record holds besides the keys of every record (absent from failed records); and
#: ``per_query`` when the run kept its per-query values (absent from records written before)
DONE_KEYS = ("metrics", "curves", "protocol", "splits", "features", "timings", "training")


class RecordWarning(UserWarning):
    """A record in the results folder that cannot be read."""


class UnreadableRecord(Exception):
    """Raised internally when a record file is truncated, not JSON, or not a valid record."""


# ----------------------------------------------------------------------------- the record

def default_params(kind: str, name: str) -> dict[str, Any] | None:
    """The parameters of the registered component ``name`` of ``kind`` at their defaults, as
    JSON values (what a resolved config holds); None when no loaded plugin registers it."""
    from .registry import registry

    try:
        defaults = registry(kind).get(name).default_params()
    except HashbenchError:
        return None
    return json.loads(json.dumps(defaults, default=str))


def changed_params(params: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The items of ``params`` that are not the same item of ``defaults``, sorted by key (all of
    them when ``defaults`` is None: the component is not known)."""
    return {k: v for k, v in sorted(params.items())
            if defaults is None or k not in defaults or defaults[k] != v}


def param_label(name: str, changed: Mapping[str, Any]) -> str:
    """``name``, or ``name[k=v,...]`` listing ``changed`` in its order (values as Python prints them)."""
    if not changed:
        return name
    return name + "[" + ",".join(f"{k}={v}" for k, v in changed.items()) + "]"


@dataclass(frozen=True)
class RunLabel:
    """What identifies a run in tables and plots, fixed when its record is made.

    ``changed``: the method parameters that differ from the method's defaults when the record
    was made; ``dataset_changed``: the same for the dataset. A default changed later never
    relabels the record. ``ablation`` (stored in the record, derived from ``changed``): the
    name of the ablation the run belongs to, the changed parameter when one differs, several
    joined with "," in sorted order; None for a run at the method's defaults (the baseline of
    every ablation of its method) and for a tagged run. ``tag``: the config's tag (``tuned``):
    the row is ``nsh[tuned]`` whatever it changed, and belongs to no ablation.
    """

    method: str
    dataset: str
    changed: dict[str, Any] = field(default_factory=dict)
    dataset_changed: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> RunLabel:
        """The label of a resolved config (``RunConfig.to_dict()``) against the defaults of the
        method and dataset registered NOW: call it when the run's record is made."""
        return cls(config["method"], config["dataset"],
                   changed_params(config.get("method_params") or {}, default_params("method", config["method"])),
                   changed_params(config.get("dataset_params") or {},
                                  default_params("dataset", config["dataset"])),
                   config.get("tag"))

    @property
    def ablation(self) -> str | None:
        return None if self.tag is not None else ",".join(sorted(self.changed)) or None

    @property
    def ablation_keys(self) -> tuple[str, ...]:
        """The changed parameters' names, sorted (empty for a baseline run and a tagged one)."""
        return () if self.tag is not None else tuple(sorted(self.changed))

    def method_label(self) -> str:
        """``nsh``, ``nsh[positives=8,sorter=exact]`` listing the changed parameters, or
        ``nsh[tuned]`` for a tagged run."""
        return f"{self.method}[{self.tag}]" if self.tag is not None else param_label(self.method, self.changed)

    def dataset_label(self) -> str:
        """``fashion-mnist``, or ``fashion-mnist[split_seed=1]`` listing the changed parameters."""
        return param_label(self.dataset, self.dataset_changed)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "dataset": self.dataset, "changed": dict(self.changed),
               "dataset_changed": dict(self.dataset_changed), "ablation": self.ablation}
        if self.tag is not None:
            out["tag"] = self.tag
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunLabel:
        return cls(data["method"], data["dataset"], dict(data.get("changed") or {}),
                   dict(data.get("dataset_changed") or {}), data.get("tag"))


@dataclass(frozen=True)
class RunRecord(Mapping):
    """The record of one run (version :data:`RECORD_VERSION`), as stored in ``runs/<run_id>.json``.

    Every record: ``run_id`` (the hash of ``config``), ``status`` ("done" or "failed"),
    ``config`` (``RunConfig.to_dict()``), ``label`` (:class:`RunLabel`), ``error`` (None when
    done), ``host``, ``started_at``/``finished_at`` (ISO 8601 UTC), ``seconds``, ``versions``
    (package versions). A done record also has ``metrics`` (:data:`RECORD_METRICS`),
    ``curves`` (:data:`CURVES`), ``protocol``, ``splits`` (sizes), ``features`` (how images
    became features, or None), ``timings`` and ``training`` (the method's report); a failed
    one its ``traceback`` (None when the process running it died or was interrupted).
    ``per_query``: a done record's per-query file (:meth:`QueryValues.entry
    <hashbench.queries.QueryValues.entry>`), None when the run kept none. ``model``: a done
    record's saved fitted method (:func:`model_entry`: ``file``, ``sha256``, ``bytes`` and
    ``query_codes_sha256``, the SHA-256 of the packed query codes the run evaluated), None when
    the run kept none. ``extra``: keys this version does not know, kept as they were.

    It is also a read-only mapping of its JSON form (``record["status"]``, ``record.get(...)``,
    ``dict(record)``), for code written against the files.
    """

    run_id: str
    status: str
    config: dict[str, Any]
    label: RunLabel
    error: str | None = None
    traceback: str | None = None
    host: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    curves: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None
    splits: dict[str, int] | None = None
    features: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    training: dict[str, Any] | None = None
    per_query: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    record_version: int = RECORD_VERSION

    @classmethod
    def new(cls, config: Mapping[str, Any], **fields: Any) -> RunRecord:
        """A record made now for the resolved ``config`` (``RunConfig.to_dict()``): its run id
        and its label against today's defaults (:meth:`RunLabel.of`)."""
        from .config import run_id_of

        return cls(run_id=run_id_of(dict(config)), config=dict(config), label=RunLabel.of(config), **fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the keys of every record, then the done keys (done records) or the
        traceback (failed ones), ``per_query`` when there is one, then ``extra``."""
        out: dict[str, Any] = {"record_version": self.record_version, "run_id": self.run_id, "status": self.status,
                               "config": self.config, "label": self.label.to_dict(), "error": self.error,
                               "host": self.host, "started_at": self.started_at,
                               "finished_at": self.finished_at, "seconds": self.seconds, "versions": self.versions}
        if self.status == "failed" or self.traceback is not None:
            out["traceback"] = self.traceback
        for key in DONE_KEYS:
            if self.status == "done" or getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.per_query is not None:
            out["per_query"] = self.per_query
        if self.model is not None:
            out["model"] = self.model
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """The record of a JSON form of any version (an older one is migrated first, see
        :func:`migrate`); not validated (:func:`load_record` is)."""
        data = migrate(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"label", "extra"}
        return cls(label=RunLabel.from_dict(data["label"]),
                   extra={k: v for k, v in data.items() if k not in known and k != "label"},
                   **{k: data[k] for k in known if k in data})

    # a read-only mapping of the JSON form
    def _json(self) -> dict[str, Any]:
        view = self.__dict__.get("_json_view")
        if view is None:
            view = self.to_dict()
            object.__setattr__(self, "_json_view", view)
        return view

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())


def as_record(record: RunRecord | Mapping[str, Any]) -> RunRecord:
    """``record`` as a RunRecord: itself, or its JSON form migrated (not validated), e.g. a
    record loaded with ``json.loads`` by a script."""
    return record if isinstance(record, RunRecord) else RunRecord.from_dict(record)


def migrate(data: Mapping[str, Any]) -> dict[str, Any]:
    """A record's JSON form brought to :data:`RECORD_VERSION`, as a new dict (``data`` is left
    as it is; a current one is copied unchanged).

    Version 0 (no ``record_version``: records written before the RunRecord schema) gains its
    ``label``, derived from its own config. Such a record does not hold the defaults its run
    had, so the rule is: ``changed`` holds the parameters that differ from the defaults of the
    method (and dataset) registered when the record is migrated, as tables and plots labelled
    it before (all of them when the method is not installed). ``hashbench migrate`` rewrites a
    folder's records in the current version, which fixes their labels from then on.
    """
    version = data.get("record_version", 0)
    if version == RECORD_VERSION:
        return dict(data)
    out = dict(data)
    if version == 0:
        out["label"] = RunLabel.of(data["config"]).to_dict()
    out["record_version"] = RECORD_VERSION
    return out


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_label(label: Any, config: dict[str, Any]) -> str | None:
    """Why ``label`` is not the label of ``config`` (None when it is)."""
    if not isinstance(label, dict):
        return "label is not a mapping"
    for key in ("method", "dataset"):
        if label.get(key) != config[key]:
            return f"label.{key} {label.get(key)!r} is not config.{key}"
    for key, params in (("changed", "method_params"), ("dataset_changed", "dataset_params")):
        changed = label.get(key)
        if not isinstance(changed, dict):
            return f"label.{key} is not a mapping"
        held = config.get(params, {})
        if any(k not in held or held[k] != v for k, v in changed.items()):
            return f"label.{key} holds values that are not in config.{params}"
    if label.get("tag") != config.get("tag"):
        return f"label.tag {label.get('tag')!r} is not config.tag {config.get('tag')!r}"
    expected = None if label.get("tag") is not None else (",".join(sorted(label["changed"])) or None)
    if label.get("ablation") != expected:
        return f"label.ablation {label.get('ablation')!r} does not name its changed parameters"
    return None


def check_record(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it is a valid run record stored at ``path``, else :class:`UnreadableRecord`
    saying why. The schema: ``run_id`` (the file's name, and the hash of ``config``), ``status``
    ("done" or "failed"), ``config`` (method, dataset, bits, seed and their parameter dicts); a
    done record has every metric of METRICS as a finite number, ``metrics.topk`` a whole
    number or null, and CURVES as lists of finite numbers of equal length; a failed one an
    ``error`` text; ``seconds``, where present, a finite number >= 0 or null. From version 1,
    ``record_version`` (a whole number, at most :data:`RECORD_VERSION`) and ``label``, whose
    method and dataset are the config's, whose changed values are the config's, and whose
    ablation names its changed parameters. Version 0 has neither. A done record's
    ``per_query``, when not null, names its own per-query file (:func:`hashbench.queries.check_entry`)."""
    from .config import run_id_of

    def bad(why: str) -> None:
        raise UnreadableRecord(why)

    if not isinstance(data, dict) or any(k not in data for k in RECORD_KEYS):
        bad("not a hashbench run record (missing run_id, status or config)")
    version = data.get("record_version", 0)
    if not _whole(version) or version < 0:
        bad(f"record_version {version!r} is not a whole number")
    if version > RECORD_VERSION:
        bad(f"record_version {version} is newer than this hashbench reads ({RECORD_VERSION}): upgrade hashbench")
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
    if version >= 1:
        why = _check_label(data.get("label"), config)
        if why:
            bad(why)
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
    if data.get("per_query") is not None:
        why = check_entry(data["per_query"], data["run_id"], METRICS)
        if why:
            bad(why)
    if data.get("model") is not None:
        why = _check_model_entry(data["model"], data["run_id"])
        if why:
            bad(why)
    return data


def model_name(run_id: str) -> str:
    """The run's saved fitted method (:meth:`HashMethod.fitted_state`), relative to the runs folder."""
    return f"{run_id}{MODEL_SUFFIX}"


def model_entry(run_id: str, data: bytes, query_codes_sha256: str) -> dict[str, Any]:
    """A record's ``model`` entry for the model file ``data`` of run ``run_id``."""
    return {"file": model_name(run_id), "sha256": sha256(data), "bytes": len(data),
            "query_codes_sha256": query_codes_sha256}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_model_entry(entry: Any, run_id: str) -> str | None:
    """Why ``entry`` is not a valid ``model`` entry of the record ``run_id`` (None if it is)."""
    if not isinstance(entry, dict):
        return "model is not a mapping"
    if entry.get("file") != model_name(run_id):
        return f"model.file {entry.get('file')!r} is not {model_name(run_id)!r}"
    if not _is_digest(entry.get("sha256")) or not _is_digest(entry.get("query_codes_sha256")):
        return "model.sha256 or model.query_codes_sha256 is not a SHA-256 hex digest"
    if not _whole(entry.get("bytes")) or entry["bytes"] <= 0:
        return f"model.bytes is {entry.get('bytes')!r}, not a whole number > 0"
    return None


def load_record(data: Any, path: Path) -> RunRecord:
    """THE reader: the RunRecord of ``data`` (a record's parsed JSON) stored at ``path``,
    validated (:func:`check_record`) and migrated to the current version (:func:`migrate`);
    :class:`UnreadableRecord` saying why it is not a valid record."""
    return RunRecord.from_dict(check_record(data, path))


def _read_json(path: Path) -> RunRecord:
    """The record in the file ``path`` (:func:`load_record`), or UnreadableRecord."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableRecord(f"{type(exc).__name__}: {exc}") from None
    return load_record(data, path)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever the file is replaced or rewritten (inode, size, mtime); None if gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


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


@dataclass
class Snapshot:
    """A results folder's records as read once (:meth:`RunStore.snapshot`): the valid ones by
    run id, why each invalid one is unreadable, and each file's identity, so that
    :meth:`RunStore.records` ``(since=...)`` re-reads only the files written since."""

    records: dict[str, RunRecord] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    identities: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def done(self) -> frozenset[str]:
        """The run ids with a valid record of status ``done``."""
        return frozenset(run_id for run_id, rec in self.records.items() if rec.status == "done")


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

    def model_path(self, run_id: str) -> Path:
        """The run's saved fitted method (:func:`model_name`)."""
        return self.runs_dir / model_name(run_id)

    def sidecar_path(self, run_id: str) -> Path:
        """The run's per-query file (:mod:`hashbench.queries`)."""
        return self.runs_dir / sidecar_name(run_id)

    def _move_aside(self, path: Path, folder: str) -> Path:
        """Move the record ``path`` (and its per-query file, if any, under the same new name
        with the per-query suffix) into ``runs/<folder>/``; returns the record's new path."""
        target_dir = self.runs_dir / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = target_dir / f"{path.stem}.{stamp}{path.suffix}"
        n = 1
        while target.exists():
            target = target_dir / f"{path.stem}.{stamp}-{n}{path.suffix}"
            n += 1
        os.replace(path, target)
        sidecar = self.sidecar_path(path.stem)
        if sidecar.exists():
            os.replace(sidecar, target.with_name(sidecar_name(target.stem)))
        model = self.model_path(path.stem)
        if model.exists():
            os.replace(model, target.with_name(model_name(target.stem)))
        return target

    def read(self, run_id: str) -> RunRecord | None:
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

    def peek(self, run_id: str) -> RunRecord | None:
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
        """Whether a readable record with status ``done`` exists (reads only; moves nothing).
        To ask it of a whole grid, read the folder once: :meth:`snapshot` ``.done``."""
        path = self.path(run_id)
        try:
            return path.exists() and _read_json(path).status == "done"
        except UnreadableRecord:
            return False

    def write(self, record: RunRecord | Mapping[str, Any], queries: QueryValues | None = None,
              model: tuple[bytes, str] | None = None) -> Path:
        """THE writer: store ``record`` atomically as JSON (a mapping is taken as a record's
        JSON form, migrated if it is of an older version); a finished record it replaces goes to
        ``runs/superseded/``, an unreadable one to ``runs/unreadable/`` (each with its per-query
        file). ``queries``: a done run's per-query values, written atomically first to
        ``runs/<run-id>.queries.npz``, then named in the record's ``per_query``. ``model``: a done
        run's (model file bytes, SHA-256 of its packed query codes), written atomically first
        to ``runs/<run-id>.model.pt``, then named in the record's ``model``."""
        record = as_record(record)
        path = self.path(record.run_id)
        if path.exists():
            try:
                previous = _read_json(path)
            except UnreadableRecord:
                previous = None
                self._move_aside(path, "unreadable")
            if previous is not None and previous.status == "done":
                self._move_aside(path, "superseded")
        if queries is not None:
            if record.status != "done":
                raise HashbenchError(f"run {record.run_id}: per-query values belong to a done record")
            data = queries.to_bytes()
            queries.check_means(record.metrics or {}, f"run {record.run_id}")
            atomic_write_bytes(self.sidecar_path(record.run_id), data)
            record = dataclasses.replace(record, per_query=queries.entry(record.run_id, data))
        if model is not None:
            if record.status != "done":
                raise HashbenchError(f"run {record.run_id}: a saved model belongs to a done record")
            data, codes_digest = model
            atomic_write_bytes(self.model_path(record.run_id), data)
            record = dataclasses.replace(record, model=model_entry(record.run_id, data, codes_digest))
        atomic_write_json(path, record.to_dict())
        return path

    def model_bytes(self, record: RunRecord) -> bytes:
        """The bytes of a done record's model file, checked against the record (SHA-256).
        HashbenchError naming the file when the run kept no model, or the file is missing or
        not the one its record names."""
        entry = record.model
        if entry is None:
            raise HashbenchError(f"run {record.run_id} kept no model (recorded before models were saved, or run with "
                                 f"--no-models); `hashbench run --force` reruns it and keeps one")
        return self._named_file(record, entry, "model file", "model file", HashbenchError)[1]

    def _named_file(self, record: RunRecord, entry: dict[str, Any], what: str, noun: str,
                    error: type[HashbenchError]) -> tuple[Path, bytes]:
        """(path, bytes) of the file a record's entry names (``file``, relative to runs/),
        checked against the entry's ``sha256``; ``error`` naming it when it cannot be read or differs."""
        path = self.runs_dir / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise error(f"run {record.run_id}: cannot read its {what} {path} ({exc.strerror}); "
                        f"`hashbench run --force` reruns it") from None
        if sha256(data) != entry["sha256"]:
            raise error(f"{path}: not the {noun} its record names (SHA-256 differs); "
                        f"`hashbench run --force` reruns the run")
        return path, data

    def query_values(self, record: RunRecord) -> QueryValues | None:
        """The per-query values of a done record, checked against it (the file's SHA-256, its
        query count and metrics, each metric's mean); None when the record has no per-query
        file (written before they existed). QueriesError, naming the file, when the file the
        record names is missing, corrupt or another run's."""
        entry = record.per_query
        if entry is None:
            return None
        path, data = self._named_file(record, entry, "per-query file", "file", QueriesError)
        values = QueryValues.from_bytes(data, str(path))
        if values.num_queries != entry["num_queries"] or sorted(values.values) != sorted(entry["metrics"]):
            raise QueriesError(f"{path}: holds {values.num_queries} queries and {sorted(values.values)}, "
                               f"its record says {entry['num_queries']} and {entry['metrics']}")
        values.check_means(record.metrics or {}, str(path))
        return values

    def migrate(self) -> dict[str, list[str]]:
        """Rewrite, in place and atomically, every valid record of an older version in the
        current one (:func:`migrate`: same run, same results; nothing goes to ``superseded``).
        Returns the run ids ``migrated``, ``current`` (already in the current version),
        ``busy`` (held by a running process: left as they are) and ``unreadable`` (left as
        they are, with a RecordWarning each)."""
        out: dict[str, list[str]] = {"migrated": [], "current": [], "busy": [], "unreadable": []}
        if not self.runs_dir.is_dir():
            raise HashbenchError(f"no run records in {self.results_dir}: {self.runs_dir} is not a folder")
        for path in sorted(p for p in self.runs_dir.glob("*.json") if is_record_file(p)):
            with self.claim(path.stem) as claimed:
                if not claimed:
                    out["busy"].append(path.stem)
                    continue
                try:
                    data = json.loads(path.read_text())
                    record = load_record(data, path)
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, UnreadableRecord) as exc:
                    warnings.warn(f"unreadable record {path} ({exc}); left as it is", RecordWarning, stacklevel=2)
                    out["unreadable"].append(path.stem)
                    continue
                if data.get("record_version", 0) == RECORD_VERSION:
                    out["current"].append(path.stem)
                    continue
                atomic_write_json(path, record.to_dict())
                out["migrated"].append(path.stem)
        return out

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

    def existing_records(self, since: Snapshot | None = None) -> list[RunRecord]:
        """:meth:`records`, for a command that reads a folder (``table``, ``plot``, ``report``):
        a one-line HashbenchError, and nothing created, when it holds no valid record."""
        if not self.runs_dir.is_dir():
            raise HashbenchError(
                f"no run records in {self.results_dir}: {self.runs_dir} is not a folder "
                "(`hashbench run` writes it; --results-dir names another folder)"
            )
        records = self.records(since)
        if not records:
            raise HashbenchError(f"no valid run records in {self.runs_dir}")
        return records

    def _files(self, run_ids: Iterable[str] | None = None) -> list[Path]:
        if run_ids is not None:
            return sorted(p for p in map(self.path, set(run_ids)) if p.exists())
        return sorted(p for p in self.runs_dir.glob("*.json") if is_record_file(p))

    def snapshot(self, run_ids: Iterable[str] | None = None) -> Snapshot:
        """Read every record file (or those of ``run_ids``) once, quietly: the valid records,
        why the others are unreadable (no warning: :meth:`read` and :meth:`records` give
        those), and each file's identity. ``snapshot().done`` is the set of finished run ids
        when a grid starts."""
        snap = Snapshot()
        for path in self._files(run_ids):
            identity = _identity(path)
            if identity is None:
                continue  # removed since the listing
            try:
                snap.records[path.stem] = _read_json(path)
            except UnreadableRecord as exc:
                snap.unreadable[path.stem] = str(exc)
            snap.identities[path.stem] = identity
        return snap

    def records(self, since: Snapshot | None = None, run_ids: Iterable[str] | None = None) -> list[RunRecord]:
        """Every valid record (or those of ``run_ids`` that exist), sorted by run id (one per
        run: a record is its file ``<run-id>.json``); each unreadable or invalid one gives a
        RecordWarning and is skipped.

        ``since``: a snapshot of this folder taken earlier in this process; a file that has not
        changed since (same inode, size and modification time: every write renames a new file
        in) is taken from it instead of being read again.
        """
        out = []
        for path in self._files(run_ids):
            stem = path.stem
            if since is not None and stem in since.identities and _identity(path) == since.identities[stem]:
                if stem in since.records:
                    out.append(since.records[stem])
                else:
                    warnings.warn(f"unreadable record {path} ({since.unreadable[stem]}); skipped", RecordWarning,
                                  stacklevel=2)
                continue
            try:
                out.append(_read_json(path))
            except UnreadableRecord as exc:
                warnings.warn(f"unreadable record {path} ({exc}); skipped", RecordWarning, stacklevel=2)
        return out
