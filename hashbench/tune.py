"""``hashbench tune``: equal-budget hyperparameter search on the validation split (Optuna, SQLite).

For each (method, dataset, bits), a study searches the method's declared space
(:mod:`hashbench.space`, narrowed or extended by ``--space``) with Optuna's TPE sampler (seeded).
A trial is an ordinary run config (the method's defaults, the ``--set`` overrides and the
trial's values; deep methods validate every epoch: ``val_every=1``) fitted on the train split
and scored on the VALIDATION split only (:func:`hashbench.runner.validate`: mAP of val codes
against train codes); the query and database splits are never read. Deep methods report each
epoch's validation mAP to the median pruner, which stops trials below the median early.

Budget, the same for every method: ``trials`` (trials that completed or were pruned) or
``budget`` seconds (the wall time of the study's finished trials, failed ones included).

Studies live in ``<results>/tuning/studies.db`` (SQLite, Optuna's RDB storage; one study per
method, dataset, bits, base config, space and sampler seed: :attr:`TuneSpec.name`), so a tune
can be stopped (Ctrl-C, SIGKILL) and resumed by rerunning the same command, and several workers
(``jobs``) share a study. Workers send a heartbeat; a trial whose worker died is marked failed
once its heartbeat is :data:`GRACE_S` seconds old (by the next trial that starts), and its values
are tried again once (``RetryFailedTrialCallback``); failed trials never count.

After the search, the best trial's values are written as an experiment file,
``<results>/tuning/<study>.yaml`` (``tag: tuned``), and run on the test protocol over the usual
seeds as ordinary, idempotent runs: the tables show them as ``<method>[tuned]``.

Optuna is an optional extra: ``pip install 'hashbench[tune]'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Experiment, RunConfig
from .errors import HashbenchError
from .registry import registry
from .space import Range, resolve_space
from .store import atomic_write_text
from .trainconfig import TrainConfig

TUNING_DIR = "tuning"
DATABASE = "studies.db"
TAG = "tuned"
#: seconds between a running trial's heartbeats, and after which a silent trial is failed
HEARTBEAT_S = float(os.environ.get("HASHBENCH_TUNE_HEARTBEAT", "10"))
GRACE_S = 3 * HEARTBEAT_S
COUNTED = ("COMPLETE", "PRUNED")
#: a study stops when this many of its trials failed and they outnumber the counted ones (a
#: space whose values break the method's rules, a method that crashes): rerun after a fix
MAX_FAILURES = 10
#: what fails a trial (recorded, the study goes on); anything else stops the tune
FAILURES = (HashbenchError, ValueError, RuntimeError)


def optuna():
    """The optuna module, or a one-line HashbenchError saying how to install it."""
    try:
        import optuna as module
    except ImportError:
        raise HashbenchError("hashbench tune needs Optuna: pip install 'hashbench[tune]'") from None
    module.logging.set_verbosity(module.logging.ERROR)  # hashbench prints each trial, failures included
    return module


def database(results_dir: str | Path) -> Path:
    return Path(results_dir) / TUNING_DIR / DATABASE


def storage(results_dir: str | Path) -> Any:
    """The results folder's study storage (SQLite through Optuna's RDBStorage, with heartbeats)."""
    import warnings

    opt = optuna()
    path = database(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
        warnings.simplefilter("ignore", opt.exceptions.ExperimentalWarning)
        return opt.storages.RDBStorage(
            f"sqlite:///{path.resolve()}", engine_kwargs={"connect_args": {"timeout": 120}},
            heartbeat_interval=max(1, int(HEARTBEAT_S)), grace_period=max(2, int(GRACE_S)),
            heartbeat_stale_trial_callback=opt.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


@dataclass(frozen=True)
class TuneSpec:
    """One study: ``method`` on ``dataset`` at ``bits``, trials trained with seed ``seed``;
    ``overrides`` the fixed ``NAME.param`` values (``--set``, and ``val_every=1`` for deep
    methods), ``features`` the shallow methods' features, ``space`` the searched ranges,
    ``sampler_seed`` the TPE sampler's seed (worker k uses sampler_seed + k)."""

    method: str
    dataset: str
    bits: int
    seed: int
    overrides: dict[str, Any]
    features: dict[str, Any]
    space: dict[str, Range]
    sampler_seed: int = 0

    @property
    def name(self) -> str:
        """``<method>-<dataset>-<bits>b-<12 hex>``: the hash of everything that defines the search
        (not of the budget, so a larger budget continues the same study)."""
        ident = json.dumps({"method": self.method, "dataset": self.dataset, "bits": self.bits, "seed": self.seed,
                            "base": self.base().to_dict(),
                            "space": {k: r.describe() for k, r in sorted(self.space.items())},
                            "sampler_seed": self.sampler_seed}, sort_keys=True, default=str)
        return f"{self.method}-{self.dataset}-{self.bits}b-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"

    def experiment(self, values: Mapping[str, Any], seeds: Sequence[int], tag: str | None = None) -> Experiment:
        """The grid of this study's method with ``values`` over the fixed overrides."""
        overrides = {**self.overrides, **{f"{self.method}.{k}": v for k, v in values.items()}}
        return Experiment(methods=[self.method], datasets=[self.dataset], bits=[self.bits], seeds=list(seeds),
                          overrides=overrides, features=dict(self.features), tag=tag)

    def base(self) -> RunConfig:
        """The trial config at the method's defaults (and the fixed overrides)."""
        return self.experiment({}, [self.seed]).grid()[0]

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        """A trial's config; HashbenchError when the values break a rule of the method."""
        return self.experiment(values, [self.seed]).grid()[0]


def plan(experiment: Experiment, space: Mapping[str, Range | None], seed: int = 0,
         sampler_seed: int = 0) -> tuple[list[TuneSpec], list[str]]:
    """The studies of ``experiment``'s methods x datasets x bits (its seeds are the final runs'),
    and one note per method left out (nothing to tune). ``space``: ``--space`` overrides,
    keyed ``param`` (every method that has it) or ``method.param``."""
    methods = registry("method")
    specs, notes = [], []
    unused = set(space)
    for method in experiment.methods:
        cls = methods.get(method)
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        mine: dict[str, Range | None] = {}
        for key, rng in space.items():
            owner, dot, param = key.rpartition(".")
            if (dot and owner == method) or (not dot and key in fields):
                mine[param if dot else key] = rng
                unused.discard(key)
        ranges = resolve_space(f"method {method}", cls.Config, mine)
        if not ranges:
            notes.append(f"{method}: nothing to tune (no declared search space; --space {method}.PARAM=RANGE adds one)")
            continue
        overrides = dict(experiment.overrides)
        if issubclass(cls.Config, TrainConfig) and "val_every" not in ranges:
            overrides[f"{method}.val_every"] = 1  # a validation per epoch: the pruner's signal
        for dataset in experiment.datasets:
            for bits in experiment.bits:
                specs.append(TuneSpec(method, dataset, int(bits), seed, overrides, dict(experiment.features),
                                      ranges, sampler_seed))
    if unused:
        raise HashbenchError(f"--space {', '.join(sorted(unused))}: no tuned method has that parameter")
    return specs, notes


# ----------------------------------------------------------------------------- a study

def _counts(study: Any) -> tuple[int, float, int]:
    """(trials counted: complete or pruned, seconds spent by finished trials, trials failed)."""
    counted, spent, failed = 0, 0.0, 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name in COUNTED:
            counted += 1
        failed += t.state.name == "FAIL"
        if t.datetime_complete is not None and t.datetime_start is not None:
            spent += (t.datetime_complete - t.datetime_start).total_seconds()
    return counted, spent, failed


def _objective(spec: TuneSpec, worker: int):
    from . import runner

    opt = optuna()

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        values = {name: rng.suggest(trial, name) for name, rng in spec.space.items()}

        def on_validation(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise opt.TrialPruned(f"epoch {epoch}: validation mAP {value:.4f} below the median")

        try:
            config = spec.config(values)  # a HashbenchError (a rule of the method) fails the trial
            trial.set_user_attr("run_id", config.run_id)
            result = runner.validate(config, on_validation)
        except FAILURES as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("seconds", result["seconds"])
        return result["score"]

    return objective


def load_study(spec: TuneSpec, results_dir: str | Path, worker: int = 0) -> Any:
    """The study of ``spec`` in the results folder's storage, created when new. Worker
    ``worker``'s sampler is seeded by the sampler seed, the worker and the trials the study
    already holds: a fresh study draws the same trials every time, a resumed one does not
    replay the draws it made before."""
    import warnings

    opt = optuna()
    store = storage(results_dir)
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna's words
        warnings.simplefilter("ignore", opt.exceptions.ExperimentalWarning)
        study = opt.create_study(study_name=spec.name, storage=store, direction="maximize", load_if_exists=True,
                                 pruner=opt.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        held = len(study.get_trials(deepcopy=False))
        seed = int.from_bytes(hashlib.sha256(f"{spec.sampler_seed}/{worker}/{held}".encode()).digest()[:4], "little")
        study.sampler = opt.samplers.TPESampler(seed=seed if held or worker else spec.sampler_seed,
                                                n_startup_trials=5, multivariate=True)
    return study


def run_study(spec: TuneSpec, results_dir: str | Path, trials: int | None = None, budget: float | None = None,
              worker: int = 0, log: Any = print) -> dict[str, Any]:
    """Run ``spec``'s study until its budget is spent (``trials`` counted, or ``budget``
    seconds), continuing what the storage holds. Returns its summary (:func:`summary`)."""
    if (trials is None) == (budget is None):
        raise HashbenchError("give the budget as --trials N or --budget SECONDS (one of them)")
    study = load_study(spec, results_dir, worker)
    study.set_user_attr("spec", {"method": spec.method, "dataset": spec.dataset, "bits": spec.bits,
                                 "seed": spec.seed, "overrides": spec.overrides, "features": spec.features,
                                 "space": {k: r.describe() for k, r in spec.space.items()}})
    study.set_user_attr("budget", {"trials": trials, "seconds": budget})
    objective = _objective(spec, worker)
    while True:
        counted, spent, failed = _counts(study)
        if (trials is not None and counted >= trials) or (budget is not None and spent >= budget):
            break
        if failed >= MAX_FAILURES and failed > counted:
            last = next(t for t in reversed(study.get_trials(deepcopy=False)) if t.state.name == "FAIL")
            log(f"hashbench: {spec.name}: stopped: {failed} trials failed, {counted} counted; the last failure: "
                f"{last.user_attrs.get('error', 'its worker died')}")
            break
        study.optimize(objective, n_trials=1, catch=FAILURES)
        last = study.get_trials(deepcopy=False)[-1]
        value = f"{last.value:.4f}" if last.value is not None else "-"
        error = f" ({last.user_attrs['error']})" if "error" in last.user_attrs else ""
        log(f"hashbench: {spec.method} {spec.dataset} {spec.bits}b trial {last.number}: {last.state.name.lower()} "
            f"{value} {json.dumps(last.params, default=str)}{error}")
    return summary(study, trials)


def budget_trials(study: Any) -> int | None:
    """The trial budget the study was last run with (None: a budget in seconds, or unknown)."""
    return (study.user_attrs.get("budget") or {}).get("trials")


def summary(study: Any, trials: int | None = None) -> dict[str, Any]:
    """A study's state: trials by state, seconds spent, and the best of its counted trials
    (complete or pruned); with ``trials``, of the first ``trials`` of them to finish, so that
    workers that overshoot together (each started the last one) never give a method more
    than its budget: the rest are ``surplus``, recorded and ignored."""
    states: dict[str, int] = {}
    all_trials = study.get_trials(deepcopy=False)
    for t in all_trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    counted = sorted((t for t in all_trials if t.state.name in COUNTED), key=lambda t: (t.datetime_complete, t.number))
    surplus = counted[trials:] if trials is not None else []
    counted = counted[:trials] if trials is not None else counted
    complete = [t for t in counted if t.state.name == "COMPLETE" and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    _, spent, _ = _counts(study)
    return {"study": study.study_name, "trials": states, "counted": len(counted), "surplus": len(surplus),
            "seconds": spent, "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None, "best_trial": best.number if best else None}


def _worker(spec: TuneSpec, results_dir: str, trials: int | None, budget: float | None, worker: int) -> None:
    import torch

    torch.set_num_threads(1)
    run_study(spec, results_dir, trials, budget, worker)


def tune(spec: TuneSpec, results_dir: str | Path, trials: int | None = None, budget: float | None = None,
         jobs: int = 1, log: Any = print) -> dict[str, Any]:
    """:func:`run_study` in this process (``jobs`` 1) or in ``jobs`` worker processes sharing the study."""
    if jobs < 1:
        raise HashbenchError(f"--jobs must be >= 1, got {jobs}")
    if jobs == 1:
        return run_study(spec, results_dir, trials, budget, 0, log)
    load_study(spec, results_dir)  # created once, before the workers race for it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(spec, str(results_dir), trials, budget, k)) for k in range(jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    study = load_study(spec, results_dir)
    if bad:
        raise HashbenchError(f"{len(bad)} of {jobs} tuning workers failed (exit codes {bad}); rerun to continue")
    return summary(study, trials)


# ----------------------------------------------------------------------------- the tuned runs

def tuned_experiment_file(spec: TuneSpec, values: Mapping[str, Any], seeds: Sequence[int],
                          results_dir: str | Path, study: dict[str, Any]) -> Path:
    """Write ``<results>/tuning/<study>.yaml``: the experiment of the tuned runs (rerun it with
    ``hashbench run -c FILE``), with the study's summary as a comment."""
    data: dict[str, Any] = {"methods": [spec.method], "datasets": [spec.dataset], "bits": [spec.bits],
                            "seeds": list(seeds), "tag": TAG,
                            "set": {**spec.overrides, **{f"{spec.method}.{k}": v for k, v in values.items()}}}
    if spec.base().features:  # a shallow method on backbone features
        data.update({k: v for k, v in spec.features.items() if k in ("backbone", "pretrained", "input_size")})
    header = (f"# hashbench tune: the best of study {study['study']} ({study['counted']} trials counted, "
              f"{study['seconds']:.0f} s; validation mAP {study['best_value']:.4f}, trial {study['best_trial']})\n"
              f"# rerun: hashbench run -c {spec.name}.yaml\n")
    path = Path(results_dir) / TUNING_DIR / f"{spec.name}.yaml"
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


def best_values(spec: TuneSpec, study: dict[str, Any]) -> dict[str, Any]:
    """The best trial's values, cast to the field types the space declares."""
    values = dict(study["best_params"] or {})
    for name, rng in spec.space.items():
        if name in values and rng.kind == "int":
            values[name] = int(values[name])
        elif name in values and rng.kind == "float" and not (isinstance(values[name], float) and math.isfinite(values[name])):
            raise HashbenchError(f"study {study['study']}: trial value {name}={values[name]!r} is not a number")
    return values


@dataclass
class History:
    """One study's trials in order, for the tuning plot: ``states``, ``values`` (a complete
    trial's score; a pruned one's last reported validation mAP; else None), and the running
    best of the complete ones."""

    study: str
    method: str
    dataset: str
    bits: int
    numbers: list[int]
    states: list[str]
    values: list[float | None]

    def count(self, state: str) -> int:
        return sum(s == state for s in self.states)

    @property
    def counted(self) -> int:
        """The trials a budget counts: complete or pruned."""
        return self.count("complete") + self.count("pruned")

    def running_best(self) -> list[float | None]:
        best, out = None, []
        for state, value in zip(self.states, self.values):
            if state == "complete" and value is not None and (best is None or value > best):
                best = value
            out.append(best)
        return out


def histories(results_dir: str | Path) -> list[History]:
    """Every study of the results folder (none when it has no study storage), by name."""
    path = database(results_dir)
    if not path.exists():
        return []
    opt = optuna()
    store = storage(results_dir)
    out = []
    for info in sorted(opt.get_all_study_summaries(store), key=lambda s: s.study_name):
        study = opt.load_study(study_name=info.study_name, storage=store)
        spec = study.user_attrs.get("spec", {})
        trials = study.get_trials(deepcopy=False)
        out.append(History(info.study_name, spec.get("method", info.study_name.split("-")[0]),
                           spec.get("dataset", ""), int(spec.get("bits", 0)),
                           [t.number for t in trials], [t.state.name.lower() for t in trials],
                           [t.value for t in trials]))
    return out
