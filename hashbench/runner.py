"""Run a grid: for each RunConfig, protocol -> splits -> fit -> encode -> evaluate -> record.

``execute(task)`` is the unit every executor runs: it claims the run, skips it if a finished
record exists (unless forced), performs it, and writes its record (a
:class:`~hashbench.store.RunRecord`). A run that raises is recorded as failed (with the error)
and the grid goes on.

Each thing is built or read once per grid: the results folder is read once before the grid
(the caller's ``done`` set of finished run ids, :meth:`RunStore.snapshot`), and only a run
about to be performed is read again, under its lock; a method built to ask its cache reads
(:func:`warm_caches`) is the one the run fits when it runs in this process; frozen backbones
are built once per process (:func:`hashbench.features.frozen_backbone`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .components import SPLIT_NAMES, Splits
from .config import RunConfig
from .errors import HashbenchError
from .evaluate import evaluate, pack_codes
from .features import FeatureSpec, feature_splits, frozen_backbone
from .progress import StepLog, duration, logs_progress
from .registry import create, registry
from .queries import QueryValues
from .store import CURVES, METRICS, RECORD_METRICS, RunRecord, RunStore

VERSIONED = ("hashbench", "numpy", "numba", "scipy", "scikit-learn", "pandas", "pluggy", "torch", "torchvision", "timm")


@dataclass(frozen=True)
class RunTask:
    """What an executor ships to a worker: a run's config, where to record it, whether to redo it."""

    config: RunConfig
    results_dir: str
    force: bool = False
    #: save the fitted method beside the record (``runs/<run-id>.model.pt``, for ``hashbench export``)
    keep_model: bool = True


def package_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version(),
                # BLAS/OpenMP threads can move float results in the last digits (see README, Executors)
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "cpu_count": str(os.cpu_count())}
    for name in (*VERSIONED, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@functools.lru_cache(maxsize=4)
def _load_splits(dataset: str, params_json: str) -> tuple[Any, Splits]:
    protocol = create("dataset", dataset, **json.loads(params_json))
    splits = protocol.load()
    splits.check_disjoint(protocol.disjoint, dataset)
    return protocol, splits


@functools.lru_cache(maxsize=4)
def _load_features(dataset: str, params_json: str, features_json: str) -> tuple[Splits, dict[str, Any]]:
    protocol, splits = _load_splits(dataset, params_json)
    spec = FeatureSpec.resolve(json.loads(features_json))
    return feature_splits(protocol, json.loads(params_json), splits, spec)


def _plugin_distribution(method: str) -> str | None:
    """The distribution that provides ``method`` (for its version in the record), if known."""
    plugin = registry("method").entry(method).plugin
    if plugin.startswith("hashbench."):
        return None
    return plugin.split(":", 1)[0]


def _check_codes(codes: Any, n: int, bits: int, method: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.shape != (n, bits) or codes.dtype != np.bool_:
        raise HashbenchError(
            f"method {method}: encode must return bool codes of shape ({n}, {bits}), "
            f"got {codes.dtype} {codes.shape}"
        )
    return codes


def build_method(config: RunConfig) -> Any:
    """A new, unfitted instance of the run's method with the run's parameters."""
    return create("method", config.method, bits=config.bits, seed=config.seed, **config.method_params)


#: methods built in this process before their run (to ask their cache reads), by run id, while
#: run_grid dispatches the grid: the run takes its own instead of building another
_BUILT: dict[str, Any] = {}


@contextlib.contextmanager
def _handing_over(built: dict[str, Any]) -> Iterator[None]:
    """Offer the methods in ``built`` (run id -> unfitted method) to the runs performed in this
    process during the block; what is left is dropped after it."""
    _BUILT.update(built)
    try:
        yield
    finally:
        for run_id in built:
            _BUILT.pop(run_id, None)


def perform(config: RunConfig, workdir: Path | None = None,
            keep_model: bool = True) -> tuple[RunRecord, QueryValues, tuple[bytes, str] | None]:
    """Run one config and return its record (status ``done``, with its metrics, curves,
    protocol, split sizes, features, timings, training report and versions; host, start and end
    times and seconds are left to the caller, :func:`execute`), its per-query values (by the
    query split's ids) and, with ``keep_model``, its model file (:func:`model_file`; None when
    the method keeps no fitted state). Exceptions propagate.

    ``workdir`` is a folder private to the run (deep methods keep their checkpoints there). The
    method is the one :func:`warm_caches` built for this run in this process, if any (never
    fitted before), else a new one.
    """
    timings: dict[str, float] = {}
    params_json = json.dumps(config.dataset_params, sort_keys=True)
    t0 = time.perf_counter()
    protocol, splits = _load_splits(config.dataset, params_json)
    timings["load_s"] = time.perf_counter() - t0
    features = None
    if config.features:
        t0 = time.perf_counter()
        splits, features = _load_features(config.dataset, params_json, json.dumps(config.features, sort_keys=True))
        timings["features_s"] = time.perf_counter() - t0

    method = _BUILT.pop(config.run_id, None)
    if method is None:
        method = build_method(config)
    method.workdir = workdir
    t0 = time.perf_counter()
    method.fit(splits.train, splits.val)
    timings["fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    query_codes = _check_codes(method.encode(splits.query.x), len(splits.query), config.bits, config.method)
    db_codes = _check_codes(method.encode(splits.database.x), len(splits.database), config.bits, config.method)
    timings["encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    query_packed = pack_codes(query_codes)
    result = evaluate(
        query_packed, pack_codes(db_codes),
        splits.query.labels, splits.database.labels,
        bits=config.bits, topk=protocol.topk, per_query=True,
    )
    timings["eval_s"] = time.perf_counter() - t0

    model = model_file(method, config, query_packed) if keep_model else None
    extra = [d for d in (_plugin_distribution(config.method),) if d]
    queries = QueryValues.of(splits.query.index, {m: result["per_query"][m] for m in METRICS})
    record = RunRecord.new(
        config.to_dict(),
        status="done",
        metrics={k: result[k] for k in RECORD_METRICS},
        curves={k: result[k] for k in CURVES},
        protocol={"name": config.dataset, **config.dataset_params, **protocol.describe()},
        splits=splits.sizes(),
        features=features,
        timings=timings,
        training=method.report(),
        versions={**package_versions(extra), "eval_engine": result["engine"]},
    )
    return record, queries, model


#: what a model file holds (``torch.load(path, weights_only=True)``): see :func:`model_file`
MODEL_FORMAT = "hashbench-model"
MODEL_VERSION = 1


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays as torch tensors (what ``torch.load(weights_only=True)`` reads)."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_file(method: Any, config: RunConfig, query_codes: np.ndarray) -> tuple[bytes, str] | None:
    """The bytes of the run's model file and the SHA-256 of its packed query codes (uint8 (Q, W)),
    or None when the method keeps no fitted state (:meth:`HashMethod.fitted_state` raises).

    The file (``torch.save``; loads with ``weights_only=True``): ``{"format": MODEL_FORMAT,
    "version": MODEL_VERSION, "run_id", "method", "bits", "state": the fitted state with numpy
    arrays as tensors}``."""
    import io

    import torch

    try:
        state = method.fitted_state()
    except HashbenchError:
        return None
    buffer = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "run_id": config.run_id,
                "method": config.method, "bits": config.bits, "state": _plain(state)}, buffer)
    return buffer.getvalue(), codes_digest(query_codes)


def codes_digest(packed: np.ndarray) -> str:
    """The SHA-256 of packed codes uint8 (N, W) (their C-order bytes): a record's
    ``model.query_codes_sha256``."""
    from .queries import sha256

    return sha256(np.ascontiguousarray(packed).tobytes())


def validate(config: RunConfig, on_validation: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Fit ``config``'s method on the train split and score it on the VALIDATION split only
    (what ``hashbench tune`` optimises): mAP@min(1000, N_train) of the val codes (queries)
    against the train codes (database), with the method's selected model. The query and
    database splits are never encoded, nor their labels read.

    ``on_validation(epoch, val_map)``: called after each validation of a deep method's
    training (its model selection; epochs count from 1); it may raise to stop the trial.
    Returns ``score``, ``seconds`` and the method's training ``report``.
    """
    from .evaluate import map_at_k

    t0 = time.perf_counter()
    params_json = json.dumps(config.dataset_params, sort_keys=True)
    _, splits = _load_splits(config.dataset, params_json)
    if config.features:
        splits, _ = _load_features(config.dataset, params_json, json.dumps(config.features, sort_keys=True))
    method = build_method(config)
    method.workdir = None
    if on_validation is not None:
        def on_epoch_end(epoch: int, log: dict[str, Any]) -> None:
            if log.get("val") and log["val"][-1]["epoch"] == epoch:
                on_validation(epoch, float(log["val"][-1]["map"]))

        method.on_epoch_end = on_epoch_end
    train, val = splits.train, splits.val
    if len(val) == 0:
        raise HashbenchError(f"dataset {config.dataset}: its validation split is empty; tuning needs one")
    method.fit(train, val)
    val_codes = _check_codes(method.encode(val.x), len(val), config.bits, config.method)
    train_codes = _check_codes(method.encode(train.x), len(train), config.bits, config.method)
    score = map_at_k(pack_codes(val_codes), pack_codes(train_codes), val.labels, train.labels,
                     bits=config.bits, topk=min(1000, len(train)))
    return {"score": float(score), "seconds": time.perf_counter() - t0, "report": method.report()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(task: RunTask) -> dict[str, Any]:
    """Claim, perform and record one run. Returns a summary: run_id, status, seconds, error.

    status: ``done`` (ran now), ``skipped`` (already done), ``busy`` (another process holds it),
    ``failed`` (raised; recorded with the error text and traceback).
    """
    config = task.config
    run_id = config.run_id
    store = RunStore(task.results_dir)
    with store.claim(run_id) as claimed:
        if not claimed:
            return {"run_id": run_id, "status": "busy"}
        previous = store.read(run_id)  # moves an unreadable record aside, with a warning
        if previous is not None and previous.status == "done" and not task.force:
            return {"run_id": run_id, "status": "skipped"}
        started_at = _now()
        t0 = time.perf_counter()
        workdir = Path(task.results_dir) / "checkpoints" / run_id
        interrupt: KeyboardInterrupt | None = None
        queries = model = None
        try:
            record, queries, model = perform(config, workdir, task.keep_model)
            shutil.rmtree(workdir, ignore_errors=True)  # finished: only interrupted runs keep checkpoints
        except (Exception, SystemExit) as exc:  # a failing run is recorded and the grid goes on
            error = (f"SystemExit: the run called sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
                     else f"{type(exc).__name__}: {exc}")
            record = RunRecord.new(config.to_dict(), status="failed", error=error, traceback=traceback.format_exc(),
                                   versions=package_versions())
        except KeyboardInterrupt as exc:  # Ctrl-C: recorded as well, then it stops the grid
            record = RunRecord.new(config.to_dict(), status="failed", error="KeyboardInterrupt: interrupted (Ctrl-C)",
                                   versions=package_versions())
            interrupt = exc
        record = dataclasses.replace(record, host=socket.gethostname(), started_at=started_at,
                                     seconds=time.perf_counter() - t0, finished_at=_now())
        store.write(record, queries, model)
        if interrupt is not None:
            raise interrupt
        return {"run_id": run_id, "status": record.status, "seconds": record.seconds, "error": record.error}


def record_lost_run(task: RunTask, error: str, started_at: str | None = None,
                    seconds: float | None = None, wait_s: float = 5.0) -> dict[str, Any]:
    """Record, from the driver, that the process running ``task`` died: status ``failed``.

    The executor calls it when a worker is gone (killed, out of memory, its node lost), so the
    run is never left half-done: the next invocation redoes it. It claims the run first (the
    dead worker's lock is released by the kernel; it waits up to ``wait_s`` seconds for a lock
    that lingers), and keeps a ``done`` record that the worker or another process wrote since
    ``started_at``. Returns a summary like :func:`execute`'s; ``busy`` if another process holds
    the run.
    """
    config = task.config
    run_id = config.run_id
    store = RunStore(task.results_dir)
    deadline = time.monotonic() + wait_s
    while True:
        with store.claim(run_id) as claimed:
            if claimed:
                previous = store.read(run_id)
                if previous is not None and previous.status == "done" and (
                        not task.force or (started_at is not None and (previous.started_at or "") >= started_at)):
                    return {"run_id": run_id, "status": "done", "seconds": previous.seconds, "error": None}
                store.write(RunRecord.new(
                    config.to_dict(), status="failed", error=error, traceback=None,
                    host=None,  # the worker's; the driver may not know it
                    started_at=started_at, finished_at=_now(), seconds=seconds, versions=package_versions()))
                return {"run_id": run_id, "status": "failed", "seconds": seconds, "error": error}
        if time.monotonic() >= deadline:
            return {"run_id": run_id, "status": "busy"}
        time.sleep(0.1)


def pending(configs: Sequence[RunConfig], results_dir: str | Path, force: bool = False,
            done: Iterable[str] | None = None) -> list[RunConfig]:
    """The configs still to run, in order: all of them with ``force``; else those whose run id
    is not in ``done`` (the finished run ids; when None, read from ``results_dir``, each grid
    record once)."""
    if force:
        return list(configs)
    ids = [c.run_id for c in configs]  # once each: a run id hashes the whole config
    done = RunStore(results_dir).snapshot(ids).done if done is None else frozenset(done)
    return [c for c, run_id in zip(configs, ids) if run_id not in done]


def preflight(configs: Sequence[RunConfig], results_dir: str | Path, force: bool = False,
              done: Iterable[str] | None = None) -> None:
    """Check, before any run starts, what would otherwise fail every run of a dataset.

    For each dataset with runs still to do (:func:`pending`; ``done``: the finished run ids,
    read from ``results_dir`` when None): its data loads and its splits are disjoint; and each
    backbone those runs need (for features, or inside a deep method) is available, weights
    included (built frozen, once per process: the runs and :func:`warm_caches` reuse it).
    Raises HashbenchError.
    """
    todo = pending(configs, results_dir, force, done)
    for dataset, params in {(c.dataset, json.dumps(c.dataset_params, sort_keys=True)) for c in todo}:
        _load_splits(dataset, params)
    backbones = set()
    for c in todo:
        if c.features and c.features.get("backbone") is not None:
            spec = FeatureSpec.resolve(c.features)
            backbones.add((spec.backbone, spec.pretrained, spec.input_size))
        elif "backbone" in c.method_params:  # a deep method's own backbone
            p = c.method_params
            backbones.add((p["backbone"], p.get("pretrained", False), p.get("input_size")))
    for name, pretrained, input_size in sorted(backbones, key=str):
        frozen_backbone(name, pretrained, input_size)


def _cache_reads(config: RunConfig, built: dict[str, Any] | None = None) -> list[Any]:
    """The cache reads of one run: its backbone features, or its method's own (``cache_reads``).

    A method class that keeps HashMethod's ``cache_reads`` (none) is not built; one that has its
    own is built to ask it, and kept in ``built`` (by run id) for the run to fit."""
    from .banks import CacheRead
    from .components import HashMethod

    if config.features:
        spec = FeatureSpec.resolve(config.features)
        if spec.backbone is None:
            return []
        return [CacheRead(spec.backbone, spec.pretrained, spec.input_size, "pooled", splits=SPLIT_NAMES)]
    if getattr(registry("method").get(config.method), "cache_reads", None) is HashMethod.cache_reads:
        return []
    method = build_method(config)
    if built is not None:
        built[config.run_id] = method
    return list(method.cache_reads())


def warm_caches(configs: Sequence[RunConfig], results_dir: str | Path, force: bool = False,
                progress: bool = True, done: Iterable[str] | None = None,
                built: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Compute, before a grid, the frozen-backbone outputs its pending runs will read.

    Pending runs: :func:`pending` (``done``: the finished run ids, read from ``results_dir``
    when None). Reads are grouped by dataset and backbone: each split's clean outputs of every
    kind the runs need (pooled features, tokens) come from ONE backbone pass
    (:func:`hashbench.banks.clean_outputs`), and so does each view bank
    (:func:`hashbench.banks.view_banks`); each backbone is built once per process
    (:func:`hashbench.features.frozen_backbone`). Cached results cost a disk read (their header:
    nothing is loaded into memory). ``built``: where to keep, by run id, the methods built to ask
    their cache reads (see :func:`run_grid`). Returns what was done:
    [{dataset, backbone, what, outputs, cache_hit}].
    """
    from .banks import clean_outputs, view_banks

    groups: dict[tuple[Any, ...], dict[str, dict[Any, set[str]]]] = {}
    for c in pending(configs, results_dir, force, done):
        for read in _cache_reads(c, built):
            key = (c.dataset, json.dumps(c.dataset_params, sort_keys=True), read.backbone,
                   read.pretrained, read.input_size)
            group = groups.setdefault(key, {"clean": {}, "banks": {}})
            for split in read.splits:
                group["clean"].setdefault(split, set()).add(read.output)
            if read.bank is not None:
                group["banks"].setdefault(tuple(read.bank), set()).add(read.output)
    done_work: list[dict[str, Any]] = []
    log = StepLog("cache pass", _cache_passes(groups), "images", enabled=logs_progress(progress))
    for (dataset, params, name, pretrained, input_size), group in groups.items():
        _, splits = _load_splits(dataset, params)
        backbone = frozen_backbone(name, pretrained, input_size)
        for split, outputs in group["clean"].items():
            t0 = time.perf_counter()
            x = getattr(splits, split).x
            got = clean_outputs(backbone, x, sorted(outputs), progress=progress, fetch=False)
            done_work.append({"dataset": dataset, "backbone": name, "what": f"clean {split}",
                              "outputs": sorted(outputs),
                              "cache_hit": all(info["cache_hit"] for _, info in got.values())})
            _log_pass(log, done_work[-1], len(x), time.perf_counter() - t0)
        for (recipe, views), outputs in group["banks"].items():
            t0 = time.perf_counter()
            got = view_banks(backbone, splits.train.x, recipe, views, sorted(outputs), progress=progress,
                             fetch=False)
            done_work.append({"dataset": dataset, "backbone": name, "what": f"bank {recipe} x{views}",
                              "outputs": sorted(outputs),
                              "cache_hit": all(info["cache_hit"] for _, info in got.values())})
            _log_pass(log, done_work[-1], len(splits.train) * views, time.perf_counter() - t0)
    return done_work


def _cache_passes(groups: dict[tuple[Any, ...], dict[str, dict[Any, set[str]]]]) -> list[tuple[str, None, float]]:
    """The steps of :func:`warm_caches` for its StepLog: (key, None, images to encode)."""
    steps = []
    for (dataset, params, name, *_), group in groups.items():
        _, splits = _load_splits(dataset, params)
        steps += [(f"{dataset} {name} clean {split}", None, max(1, len(getattr(splits, split))))
                  for split in group["clean"]]
        steps += [(f"{dataset} {name} bank {recipe} x{views}", None, max(1, len(splits.train) * views))
                  for recipe, views in group["banks"]]
    return steps


def _log_pass(log: StepLog, work: dict[str, Any], images: int, seconds: float) -> None:
    """One line for a finished cache pass (a cache hit costs nothing: it does not teach the estimate)."""
    key = f"{work['dataset']} {work['backbone']} {work['what']}"
    how = "cached already" if work["cache_hit"] else f"{images:,} images in {duration(seconds)}"
    log.done(key, None if work["cache_hit"] else seconds, f"{key} ({'+'.join(work['outputs'])}): {how}")


def run_grid(
    configs: Sequence[RunConfig],
    results_dir: str | Path,
    executor: str = "local",
    executor_params: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    warm: bool = True,
    done: Iterable[str] | None = None,
    keep_models: bool = True,
) -> list[dict[str, Any]]:
    """Run every config through the named executor; returns one summary per run.

    ``keep_models``: each done run saves its fitted method beside its record (what
    ``hashbench export`` reads); False saves none.

    Runs already done (unless ``force``) are not dispatched: their summary is ``skipped``.
    ``done``: the finished run ids, as the caller read them (``RunStore.snapshot().done``);
    read from ``results_dir`` when None, each grid record once. A run whose worker died is
    recorded ``failed`` by the executor (:func:`record_lost_run`). Summaries come in the order
    runs finish. ``warm``: first compute the frozen-backbone outputs the pending runs read
    (:func:`warm_caches`), so that runs (and parallel workers) find them cached; the methods it
    builds for that are the ones the runs fit when the executor runs them in this process.
    """
    from tqdm import tqdm

    runner = create("executor", executor, **(executor_params or {}))
    ids = [c.run_id for c in configs]  # once each: a run id hashes the whole config
    if not force and done is None:
        done = RunStore(results_dir).snapshot(ids).done
    finished = frozenset() if force else frozenset(done or ())
    todo = [c for c, run_id in zip(configs, ids) if run_id not in finished]
    built: dict[str, Any] = {}
    if warm:
        warm_caches(todo, results_dir, progress=progress, done=(), built=built)
    # workers may run elsewhere (another cwd, another machine on a shared filesystem)
    results_dir = Path(results_dir).absolute()
    # finished runs are never dispatched (execute checks again under the lock)
    summaries: list[dict[str, Any]] = [{"run_id": run_id, "status": "skipped"} for run_id in ids
                                       if run_id in finished]
    tasks = [RunTask(c, str(results_dir), force, keep_models) for c in todo]
    log = StepLog("run", [(t.config.run_id, t.config.method, 1.0) for t in tasks], "runs",
                  enabled=logs_progress(progress))
    with _handing_over(built), tqdm(total=len(configs), initial=len(summaries), desc="runs", unit="run",
                                    disable=None if progress else True, dynamic_ncols=True) as bar:
        results: Iterator[dict[str, Any]] = runner.map(execute, tasks) if tasks else iter(())
        for summary in results:
            summaries.append(summary)
            bar.set_postfix_str(f"{summary['run_id'][:40]} {summary['status']}")
            bar.update(1)
            _log_run(log, summary)
    return summaries


def _log_run(log: StepLog, summary: dict[str, Any]) -> None:
    """One line for a finished run: its id, status and seconds (and error, first line)."""
    seconds = summary.get("seconds")
    detail = f"{summary['run_id']} {summary['status']}"
    if seconds is not None:
        detail += f" in {duration(seconds)}"
    if summary.get("error"):
        detail += f" ({str(summary['error']).splitlines()[0][:120]})"
    log.done(summary["run_id"], seconds if summary["status"] == "done" else None, detail)
