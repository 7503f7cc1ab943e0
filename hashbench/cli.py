"""The ``hashbench`` command: run, ablate, table, compare, plot, report, evaluate, list.

Bad input (an unknown name, a wrong bit count, a malformed file) prints one line
``hashbench: ...`` and exits with code 2; a grid with failed runs exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .config import (
    DEFAULT_BITS,
    DEFAULT_DATASET,
    DEFAULT_EXPERIMENT,
    DEFAULT_RESULTS_DIR,
    DEFAULT_SEEDS,
    FEATURE_KEYS,
    Experiment,
    load_experiment_file,
    parse_list,
    parse_set,
    suited_inputs,
)
from .errors import HashbenchError
from .registry import HOOKS, PLURAL, normalize_kind, registry
from .store import METRICS

EXIT_USAGE = 2
#: a run failed, or the machine refused a write (a full disk)
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit with code 2 (no usage dump).

    ``before_parse``: functions ``f(parser)`` that add arguments on first use (before parsing or
    help), so that only the commands that need the registry load it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_parse: list[Callable[[argparse.ArgumentParser], None]] = []

    def _complete(self) -> None:
        while self.before_parse:
            self.before_parse.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.partition(" ")[2]  # "ablate" of "hashbench ablate"; main adds "hashbench: "
        raise HashbenchError(f"{command}: {message}" if command else message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"hashbench: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- run

def suitable_methods(datasets: Sequence[str]) -> list[str]:
    """Every registered method whose input every one of ``datasets`` can provide."""
    inputs = [suited_inputs(registry("dataset").get(d)) for d in datasets]
    return [
        entry.name for entry in registry("method").entries()
        if all(getattr(entry.cls, "input", "features") in provided for provided in inputs)
    ]


def build_experiment(args: argparse.Namespace, tuning: bool = False) -> tuple[Experiment, dict[str, Any]]:
    """The experiment file (``-c``, else the default experiment) with the CLI flags over it.
    Its ``space`` is for ``hashbench tune`` (``tuning``) only, returned in the settings:
    elsewhere, an error."""
    spec = load_experiment_file(args.config or DEFAULT_EXPERIMENT)
    if "space" in spec and not tuning:
        raise HashbenchError(f"experiment file {args.config}: 'space' is read by hashbench tune only")
    if args.methods is not None:
        spec["methods"] = parse_list(args.methods, "methods")
    if args.datasets is not None:
        spec["datasets"] = parse_list(args.datasets, "datasets")
    if args.bits is not None:
        spec["bits"] = parse_list(args.bits, "bits", int)
    if args.seeds is not None:
        spec["seeds"] = parse_list(args.seeds, "seeds", int)
    if args.backbone is not None:
        # a new backbone starts from its own defaults, not the file's weights and size
        spec.update(backbone=args.backbone, pretrained=False, input_size=None)
    if args.pretrained is not None:
        spec["pretrained"] = parse_set([f"pretrained={args.pretrained}"])["pretrained"]
    if args.input_size is not None:
        spec["input_size"] = args.input_size
    overrides = dict(spec.get("set", {}))
    overrides.update(parse_set(args.set or []))
    datasets = spec.get("datasets") or [DEFAULT_DATASET]
    for name in datasets:
        registry("dataset").get(name)  # unknown dataset: one-line error before anything runs
    methods = spec.get("methods") or suitable_methods(datasets)
    experiment = Experiment(
        methods=methods,
        datasets=datasets,
        bits=spec.get("bits") or list(DEFAULT_BITS),
        seeds=spec.get("seeds") if spec.get("seeds") is not None else list(DEFAULT_SEEDS),
        overrides=overrides,
        features={k: spec[k] for k in FEATURE_KEYS if k in spec},
        tag=spec.get("tag"),
    )
    file_executor = spec.get("executor") or "local"
    executor = getattr(args, "executor", None) or file_executor
    settings = {
        "executor": executor,
        # the file's executor_params go with the file's executor (a flag naming another drops them)
        "executor_params": executor_params(
            args, executor, spec.get("executor_params", {}) if executor == file_executor else {}),
        "results_dir": args.results_dir or spec.get("results_dir") or DEFAULT_RESULTS_DIR,
        "space": spec.get("space", {}),  # hashbench tune's search ranges, as the file writes them
    }
    return experiment, settings


def executor_params(args: argparse.Namespace, executor: str, base: dict[str, Any]) -> dict[str, Any]:
    """The executor's parameters: ``base`` (the experiment file's) with the flags given over it.

    Checked now, before anything runs: a flag the executor does not take, or a bad value, is a
    one-line error (``executor local: --jobs must be >= 1, got 0`` for a flag's value).
    """
    from .params import limits_of

    cls = registry("executor").get(executor)
    params = dict(base)
    for option in executor_options().values():
        value = getattr(args, option.dest, None)
        if value is None:
            continue
        field = option.fields.get(executor)
        if field is None:
            raise HashbenchError(f"executor {executor} takes no {option.flag}")
        problem = limits_of(cls.Config, field).violation(value)
        if problem is not None:
            raise HashbenchError(f"executor {executor}: {option.flag} {problem}")
        params[field] = value
    registry("executor").create(executor, **params)
    return params


# ----------------------------------------------------------------------------- executor options

def executor_flags(cls: type) -> dict[str, str]:
    """Config field -> command-line flag of an executor class: every field of its ``Config`` is an
    option of ``run`` and ``ablate``, ``--<field-with-dashes>`` unless the class's ``cli_options``
    (a dict, field -> flag) names another flag, or None to keep the field to experiment files
    (``executor_params:``). A ``cli_options`` key that is not a field, or a flag that is not
    ``--lower-case-words``, is a one-line error naming the executor.
    """
    import dataclasses
    import re

    fields = [f.name for f in dataclasses.fields(cls.Config)]
    declared = getattr(cls, "cli_options", None) or {}
    owner = f"executor {getattr(cls, 'name', cls.__qualname__)}"
    if not isinstance(declared, dict):
        raise HashbenchError(f"{owner}: cli_options must be a dict (field -> flag), got {type(declared).__name__}")
    for field, flag in declared.items():
        if field not in fields:
            raise HashbenchError(f"{owner}: cli_options names '{field}', which is not a Config field "
                                 f"(fields: {', '.join(fields) or 'none'})")
        if flag is not None and not (isinstance(flag, str) and re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", flag)):
            raise HashbenchError(f"{owner}: cli_options gives '{field}' the flag {flag!r}; a flag is "
                                 "'--lower-case-words' (or None: no flag)")
    flags = {field: declared.get(field, "--" + field.replace("_", "-")) for field in fields}
    return {field: flag for field, flag in flags.items() if flag is not None}


@dataclass(frozen=True)
class ExecutorOption:
    """One command-line option of the executors: ``flag`` and, per executor that takes it, the
    Config field it sets (with that field's type annotation, default and declared limits)."""

    flag: str
    fields: dict[str, str]
    annotations: dict[str, Any]
    defaults: dict[str, Any]
    limits: dict[str, Any]

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def value_type(self) -> tuple[Callable[[str], Any] | None, str | None]:
        """(argparse type, metavar) for the union of the fields' types (None dropped): int;
        int or float (a number); bool (true/false); str; anything else read as a YAML scalar."""
        kinds = set()
        for annotation in self.annotations.values():
            kinds.update(_plain_types(annotation))
        if kinds == {int}:
            return int, "N"
        if kinds and kinds <= {int, float}:
            return (float if kinds == {float} else _number), "X" if kinds == {float} else "N"
        if kinds == {bool}:
            return _boolean, "true|false"
        if kinds == {str}:
            return None, None
        return _yaml_value, "VALUE"

    def help(self) -> str:
        """``executor local: worker processes ... (>= 1; default 1)``; executors with the same doc,
        limits and default share one clause (``executors ray, slurm: CPUs per run ...``)."""
        groups: dict[str, list[str]] = {}
        for executor in self.fields:
            limits, default = self.limits[executor], self.defaults[executor]
            notes = [limits.describe()] if limits.describe() else []
            if default is not None:
                notes.append(f"default {_shown(default)}")
            clause = limits.doc or self.fields[executor].replace("_", " ")
            groups.setdefault(clause + (f" ({'; '.join(notes)})" if notes else ""), []).append(executor)
        parts = [f"executor{'s' if len(names) > 1 else ''} {', '.join(names)}: {text}" for text, names in groups.items()]
        return "; ".join(parts).replace("%", "%%")


def _plain_types(annotation: Any) -> set[Any]:
    """The classes of a field annotation with None dropped: ``int | None`` -> {int}."""
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_plain_types(arm) for arm in typing.get_args(annotation)))
    if annotation is type(None):
        return set()
    return {annotation if isinstance(annotation, type) else object}


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def executor_options() -> dict[str, ExecutorOption]:
    """Every registered executor's options (:func:`executor_flags`), by flag, in the order the
    executors are listed; a flag that several executors take sets each one's own field."""
    import typing

    from .params import limits_of

    table: dict[str, ExecutorOption] = {}
    for entry in registry("executor").entries():
        cls = entry.cls
        hints = typing.get_type_hints(cls.Config)
        defaults = cls.Config()
        for field, flag in executor_flags(cls).items():
            option = table.setdefault(flag, ExecutorOption(flag, {}, {}, {}, {}))
            option.fields[entry.name] = field
            option.annotations[entry.name] = hints.get(field, Any)
            option.defaults[entry.name] = getattr(defaults, field)
            option.limits[entry.name] = limits_of(cls.Config, field)
    return table


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    """The options of every registered executor (:func:`executor_options`), in their own group
    of ``parser``; a flag the command already has is a one-line error naming the executors."""
    options = executor_options()
    for action in parser._actions:  # name the registered executors in --executor's help
        if action.dest == "executor":
            action.help = (f"executor name: {', '.join(registry('executor').names())} (default: local; "
                           "hashbench list executors)")
    # the command's own flags and destinations, its set_defaults (func) and the subcommand's dest
    taken = {dest for action in parser._actions for dest in (action.dest, *action.option_strings)}
    taken |= set(parser._defaults) | {"command"}
    group = parser.add_argument_group(
        "executor options", "set a parameter of the executor that runs the grid (over the experiment "
        "file's executor_params); each executor declares its own")
    for option in options.values():
        if option.flag in taken or option.dest in taken:
            raise HashbenchError(
                f"executor {', '.join(option.fields)}: option {option.flag} clashes with an option of "
                f"{parser.prog}; name another flag in the executor's cli_options")
        value_type, metavar = option.value_type()
        group.add_argument(option.flag, type=value_type, metavar=metavar, help=option.help())


def _run_and_report(configs, results_dir: Path, executor: str, args: argparse.Namespace,
                    executor_params: dict[str, Any] | None = None, done=None) -> dict[str, int]:
    """Run the grid (``run`` and ``ablate`` alike); print the status counts and each failure.
    ``done``: the finished run ids, as read when the command started."""
    from .runner import run_grid

    summaries = run_grid(configs, results_dir, executor, executor_params, force=args.force,
                         progress=not args.no_progress, done=done, keep_models=not args.no_models)
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    print("hashbench: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), file=sys.stderr)
    for s in summaries:
        if s["status"] == "failed":
            print(f"hashbench: failed {s['run_id']}: {s['error']}", file=sys.stderr)
    return counts


def set_data_root(args: argparse.Namespace) -> None:
    """``--data-root``: an existing folder, exported as HASHBENCH_DATA for the protocols."""
    if args.data_root is None:
        return
    root = Path(args.data_root).expanduser().resolve()
    if not root.is_dir():
        raise HashbenchError(f"--data-root {args.data_root}: no such folder")
    os.environ["HASHBENCH_DATA"] = str(root)


def check_flags_apply(args: argparse.Namespace, experiment: Experiment, configs: Sequence[Any]) -> None:
    """A grid flag that would change nothing is an error, never silently ignored: ``--backbone``,
    ``--pretrained`` and ``--input-size`` set the features of shallow methods on image datasets
    (deep methods take ``--set METHOD.backbone=...``); ``--set NAME.param`` names a method or
    dataset of the grid."""
    given = [f"--{key.replace('_', '-')}" for key in FEATURE_KEYS if getattr(args, key, None) is not None]
    if given and not any(c.features for c in configs):
        verb = "apply" if len(given) > 1 else "applies"
        raise HashbenchError(
            f"{', '.join(given)} {verb} to shallow methods on image datasets, and this grid has none "
            f"(methods: {', '.join(experiment.methods)}; datasets: {', '.join(experiment.datasets)}); "
            "a deep method takes --set METHOD.backbone=... instead"
        )
    in_grid = set(experiment.methods) | set(experiment.datasets)
    for key in parse_set(args.set or []):
        name = key.partition(".")[0]
        if name not in in_grid:
            raise HashbenchError(
                f"--set {key}: {name} is not in this grid (methods: {', '.join(experiment.methods)}; "
                f"datasets: {', '.join(experiment.datasets)})"
            )


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import preflight
    from .store import RunStore
    from .tables import write_tables

    set_data_root(args)
    experiment, settings = build_experiment(args)
    configs = experiment.grid()
    check_flags_apply(args, experiment, configs)
    registry("executor").get(settings["executor"])
    results_dir = Path(settings["results_dir"])
    store = RunStore(results_dir)
    store.check_writable()
    # the folder is read once: the finished runs, and the records the tables reuse if unchanged
    snapshot = store.snapshot([c.run_id for c in configs] if args.no_table else None)
    preflight(configs, results_dir, force=args.force, done=snapshot.done)
    print(
        f"hashbench: {len(configs)} runs ({len(experiment.methods)} methods x {len(experiment.datasets)} "
        f"datasets x {len(experiment.bits)} bit lengths x {len(experiment.seeds)} seeds) -> {results_dir / 'runs'}",
        file=sys.stderr,
    )
    counts = _run_and_report(configs, results_dir, settings["executor"], args, settings["executor_params"],
                             done=snapshot.done)
    if not args.no_table:
        markdown, paths = write_tables(store.records(since=snapshot), results_dir / "tables", store=store)
        print(markdown)
        print(f"hashbench: tables written to {paths[0].parent}", file=sys.stderr)
    return 1 if counts.get("failed") else 0


# ----------------------------------------------------------------------------- ablate

def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import plan_ablation, read_records, write_ablation_table
    from .runner import preflight
    from .store import RunStore
    from .tables import check_metric

    set_data_root(args)
    registry("method").get(args.method)  # unknown method: one-line error first
    check_metric(args.metric)
    experiment, settings = build_experiment(argparse.Namespace(**{**vars(args), "methods": args.method}))
    ablation = plan_ablation(args.method, args.vary, experiment, fixed=parse_set(args.set or []))
    configs = ablation.configs
    check_flags_apply(args, experiment, configs)
    registry("executor").get(settings["executor"])
    results_dir = Path(settings["results_dir"])
    store = RunStore(results_dir)
    store.check_writable()
    snapshot = store.snapshot(c.run_id for c in configs)  # the ablation's records, read once
    preflight(configs, results_dir, force=args.force, done=snapshot.done)
    print(
        f"hashbench: ablation of {args.method} over {', '.join(ablation.keys)}: {len(configs)} runs "
        f"({len(ablation.settings)} settings x {len(experiment.datasets)} datasets x {len(experiment.bits)} "
        f"bit lengths x {len(experiment.seeds)} seeds) -> {results_dir / 'runs'}",
        file=sys.stderr,
    )
    counts = _run_and_report(configs, results_dir, settings["executor"], args, settings["executor_params"],
                             done=snapshot.done)
    markdown, paths = write_ablation_table(ablation, read_records(ablation, results_dir, since=snapshot),
                                          results_dir / "tables", args.metric, store=store,
                                          settings=_stats_settings(args, intervals=False))
    print(markdown)
    print("hashbench: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 1 if counts.get("failed") else 0


# ----------------------------------------------------------------------------- table

def _stats_settings(args: argparse.Namespace, intervals: bool):
    from .significance import Settings

    return Settings(alpha=args.alpha, confidence=args.confidence, resamples=args.resamples, intervals=intervals)


def cmd_table(args: argparse.Namespace) -> int:
    from .store import RunStore
    from .tables import check_metric, write_tables

    results_dir = Path(args.results_dir)
    formats = parse_list(args.format, "format")
    check_metric(args.metric)
    settings = _stats_settings(args, intervals=args.ci)
    store = RunStore(results_dir)
    records = store.existing_records()
    markdown, paths = write_tables(records, results_dir / "tables", args.metric, formats, store=store,
                                   settings=settings)
    print(markdown)
    print("hashbench: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .significance import (QueryCells, all_markdown, compare_all, compare_pair, file_slug, pair_markdown,
                               write_comparison)
    from .store import RunStore
    from .tables import check_metric, records_frame

    check_metric(args.metric)
    if args.all == bool(args.labels):
        raise HashbenchError("compare takes two labels (hashbench compare nsh cibhash) or --all, not both")
    if not args.all and len(args.labels) != 2:
        raise HashbenchError(f"compare takes two labels (A B), got {len(args.labels)}: {' '.join(args.labels)}")
    settings = _stats_settings(args, intervals=True)
    results_dir = Path(args.results_dir)
    store = RunStore(results_dir)
    records = [r for r in store.existing_records() if r.status == "done"]
    frame = records_frame(records)
    cells = QueryCells.of(store, records, args.metric)
    datasets = parse_list(args.datasets, "datasets") if args.datasets else None
    bits = [int(b) for b in parse_list(args.bits, "bits")] if args.bits else None
    suffix = "" if args.metric == "map" else f"-{args.metric}"
    if args.all:
        table = compare_all(frame, cells, settings, datasets, bits)
        markdown, stem = all_markdown(table, args.metric, settings), f"compare-all{suffix}"
    else:
        a, b = (canonical_label(label) for label in args.labels)
        table = compare_pair(frame, cells, a, b, settings, datasets, bits)
        markdown, stem = pair_markdown(table, a, b, args.metric, settings), f"compare-{file_slug(a)}-vs-{file_slug(b)}{suffix}"
    paths = write_comparison(table, markdown, results_dir / "tables", stem)
    print(markdown)
    print("hashbench: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def canonical_label(text: str) -> str:
    """A row label as typed (``nsh``, ``nsh[sorter=exact]``, ``cibhash[stochastic=true]``,
    ``nsh[tuned]``) as the tables spell it: values read as YAML scalars (as ``--set`` reads
    them), keys sorted; a tag as it is."""
    name, bracket, rest = text.strip().partition("[")
    if not bracket:
        return name
    if not rest.endswith("]"):
        raise HashbenchError(f"label '{text}': expected NAME[KEY=VALUE,...] or NAME[TAG]")
    if "=" not in rest:  # a tagged row: nsh[tuned]
        return f"{name}[{rest[:-1].strip()}]"
    from .store import param_label

    items = {}
    for item in rest[:-1].split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise HashbenchError(f"label '{text}': expected NAME[KEY=VALUE,...], got '{item}'")
        items[key.strip()] = _yaml_value(value.strip())
    return param_label(name, dict(sorted(items.items())))


# ----------------------------------------------------------------------------- tune

def cmd_tune(args: argparse.Namespace) -> int:
    from .runner import run_grid
    from .space import parse_range, parse_space
    from .store import RunStore
    from .tables import write_tables
    from .tune import TAG, best_values, optuna, plan, tune, tuned_experiment_file

    optuna()  # not installed: one line, before anything else
    if (args.trials is None) == (args.budget is None):
        raise HashbenchError("give the budget as --trials N or --budget SECONDS (one of them, the same for every method)")
    set_data_root(args)
    experiment, settings = build_experiment(argparse.Namespace(**{**vars(args), "executor": None}), tuning=True)
    space = {key: parse_range(str(text), f"space {key}") for key, text in settings["space"].items()}
    space.update(parse_space(args.space or []))
    studies, notes = plan(experiment, space, seed=args.trial_seed, sampler_seed=args.sampler_seed)
    for note in notes:
        print(f"hashbench: {note}", file=sys.stderr)
    if not studies:
        raise HashbenchError("nothing to tune: no method of the grid declares a search space")
    results_dir = Path(settings["results_dir"])
    RunStore(results_dir).check_writable()
    budget = f"{args.trials} trials" if args.trials is not None else f"{args.budget:g} s"
    print(f"hashbench: tuning {len(studies)} studies, {budget} each, on the validation split -> "
          f"{results_dir / 'tuning'}", file=sys.stderr)
    lines = []
    log = (lambda text: print(text, file=sys.stderr)) if not args.no_progress else (lambda text: None)
    for spec in studies:
        summary = tune(spec, results_dir, args.trials, args.budget, args.jobs, log)
        if summary["best_params"] is None:
            lines.append(f"{spec.name}: no trial completed ({summary['trials']})")
            continue
        values = best_values(spec, summary)
        path = tuned_experiment_file(spec, values, experiment.seeds, results_dir, summary)
        lines.append(f"{spec.name}: {summary['counted']} trials in {summary['seconds']:.0f} s, best validation mAP "
                     f"{summary['best_value']:.4f} with {json.dumps(values)} -> {path}")
        if not args.no_final:
            configs = spec.experiment(values, experiment.seeds, tag=TAG).grid()
            run_grid(configs, results_dir, progress=not args.no_progress, keep_models=not args.no_models)
    print("\n".join(lines))
    if not args.no_final:
        store = RunStore(results_dir)
        _, paths = write_tables(store.records(), results_dir / "tables", store=store)
        print(f"hashbench: tables written to {paths[0].parent}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- plot, report

def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import write_plots

    results_dir = Path(args.results_dir)
    paths = write_plots(results_dir, parse_list(args.format, "format"), args.metric, args.alpha)
    for path in paths:
        print(path)
    print(f"hashbench: wrote {len(paths)} files to {results_dir / 'plots'}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import image_check, screenshot, write_report

    results_dir = Path(args.results_dir)
    page, plots = write_report(results_dir, args.metric, settings=_stats_settings(args, intervals=True))
    print(page)
    print(f"hashbench: wrote {page} ({len(plots)} plot files regenerated under {results_dir / 'plots'})",
          file=sys.stderr)
    if args.screenshot:
        shot = screenshot(page, page.parent / "screenshot.png")
        decoded, total = image_check(page)
        print(shot)
        print(f"hashbench: wrote {shot} (headless Chromium decoded {decoded} of {total} plots)", file=sys.stderr)
        if decoded != total:
            raise HashbenchError(f"headless Chromium decoded only {decoded} of {total} plots of {page}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Rewrite the folder's records of an older version (``hashbench.store.migrate``): their
    labels are fixed from then on, whatever later defaults are."""
    from .store import RECORD_VERSION, RunStore

    results_dir = Path(args.results_dir)
    outcome = RunStore(results_dir).migrate()
    print(f"hashbench: {results_dir / 'runs'}: " + ", ".join(f"{len(ids)} {what}" for what, ids in outcome.items())
          + f" (record version {RECORD_VERSION})", file=sys.stderr)
    for run_id in outcome["busy"]:
        print(f"hashbench: {run_id} is held by a running process; migrate again when it is done", file=sys.stderr)
    return 1 if outcome["busy"] or outcome["unreadable"] else 0


# ----------------------------------------------------------------------------- evaluate

def _load_npy(path: str, what: str):
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise HashbenchError(f"--{what}: no such file {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise HashbenchError(f"--{what}: cannot read {path} as .npy ({exc or 'empty file'})") from None
    if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever the file's name
        array.close()
        raise HashbenchError(f"--{what}: {path} is a .npz archive, not one .npy array")
    return array


def load_codes(path: str, bits: int | None, what: str):
    """Codes from .npy: (N, bits) {0,1}/{-1,+1}/real, or packed uint8 (N, ceil(bits/8)) with ``bits``.

    Returns (packed uint8 codes, bits).
    """
    import numpy as np

    from .evaluate import check_bits, pack_codes

    codes = _load_npy(path, what)
    if codes.ndim != 2:
        raise HashbenchError(f"--{what}: expected a 2-D array (items x bits), got shape {codes.shape}")
    if bits is not None:
        bits = check_bits(bits)
        packed_width = (bits + 7) // 8
        if codes.dtype == np.uint8 and codes.shape[1] == packed_width and not (
            packed_width == bits and set(np.unique(codes).tolist()) <= {0, 1}
        ):
            return codes, bits
        if codes.shape[1] != bits:
            raise HashbenchError(
                f"--{what}: {codes.shape[1]} columns fit neither {bits} bits nor {packed_width} packed bytes"
            )
    else:
        if codes.dtype == np.uint8 and codes.size and codes.max() > 1:
            raise HashbenchError(
                f"--{what}: uint8 values above 1 look like packed codes (8 bits per byte); "
                "give --bits to read them packed (unpacked codes are 0/1, +-1 or real)"
            )
        bits = check_bits(codes.shape[1])
    return pack_codes(codes), bits


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    query, bits = load_codes(args.query_codes, args.bits, "query-codes")
    database, db_bits = load_codes(args.db_codes, args.bits if args.bits is not None else bits, "db-codes")
    if db_bits != bits:
        raise HashbenchError(f"query codes have {bits} bits but database codes have {db_bits}")
    result = evaluate(
        query, database,
        _load_npy(args.query_labels, "query-labels"), _load_npy(args.db_labels, "db-labels"),
        bits=bits, topk=args.topk,
    )
    if args.format == "json":
        print(json.dumps(result, indent=1))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            if isinstance(value, (int, float)):
                print(f"{key:<{width}}  {value:.6f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------- export, index, search, serve

def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run
    from .store import RunStore

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    manifest = export_run(RunStore(Path(args.results_dir)), args.run, Path(args.out) if args.out else None, formats)
    print(f"hashbench: exported run {manifest['run_id']} ({manifest['label']}, {manifest['bits']} bits) "
          f"to {manifest['folder']}", file=sys.stderr)
    for fmt, entry in manifest["files"].items():
        check = manifest["checks"][fmt]
        verdict = ("equal, bit for bit" if check["equal"] else
                   f"DIFFERENT: {check['differing_bits']} bits in {check['differing_items']} items")
        print(f"{fmt:<12} {entry['file']:<14} {entry['bytes'] / 1e6:7.1f} MB  codes of {check['items']:,} query "
              f"images vs the run's: {verdict}")
    return 0 if all(c["equal"] for c in manifest["checks"].values()) else 1


def cmd_index(args: argparse.Namespace) -> int:
    from .index import build_index
    from .store import RunStore

    store = RunStore(Path(args.results_dir))
    index, report = build_index(store, args.run, images=args.images, split=args.split, out=args.out,
                                folder_labels=args.folder_labels, progress=False if args.no_progress else None)
    for path, why in report.skipped:
        print(f"hashbench: skipped {path}: {why}", file=sys.stderr)
    print(f"hashbench: index {index.path}: {len(index):,} items ({report.encoded:,} encoded, {report.reused:,} "
          f"unchanged, {report.removed:,} removed, {len(report.skipped):,} skipped), "
          f"{index.bits} bits, run {index.manifest['run']['run_id']}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .index import Index, search_files

    index = Index.load(args.index)
    k = None if args.radius is not None and args.k is None else (args.k or 10)
    results = list(search_files(index, args.images, k, args.radius))
    if args.format == "json":
        print(json.dumps([{"query": q, "results": [{"rank": r + 1, "item": index.describe(i), "distance": d,
                                                     "labels": index.label_names(i)}
                                                    for r, (i, d) in enumerate(hits)]} for q, hits in results],
                         indent=1))
        return 0
    for query, hits in results:
        print(f"{query}: {len(hits)} result{'s' if len(hits) != 1 else ''}")
        for rank, (i, d) in enumerate(hits, 1):
            labels = ",".join(index.label_names(i))
            print(f"  {rank:>3}  {d:>3}  {index.describe(i)}" + (f"  [{labels}]" if labels else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    return serve(args.index, host=args.host, port=args.port, k=args.k, max_upload_mb=args.max_upload_mb)


# ----------------------------------------------------------------------------- list

def cmd_list(args: argparse.Namespace) -> int:
    kinds = [normalize_kind(args.kind)] if args.kind else list(HOOKS)
    for kind in kinds:
        entries = registry(kind).entries(args.pattern)
        if len(kinds) > 1:
            print(f"{PLURAL[kind]}:")
        if not entries:
            print("  (none)" if len(kinds) > 1 else f"no {PLURAL[kind]} registered")
            continue
        name_w = max(len(e.name) for e in entries)
        plugin_w = max(len(e.plugin) for e in entries)
        indent = "  " if len(kinds) > 1 else ""
        for e in entries:
            print(f"{indent}{e.name:<{name_w}}  {e.plugin:<{plugin_w}}  {e.summary}")
            if args.params:
                print_params(e.cls, indent + "    ")
    return 0


def print_params(cls: type, indent: str = "") -> None:
    """One line per field of ``cls.Config``: name, type, default, declared limits, search range
    (``tune <range>``, or - when ``hashbench tune`` leaves the field alone), doc."""
    from .params import describe

    rows = describe(cls.Config)
    if not rows:
        print(f"{indent}(no parameters)")
        return
    cells = [(r["name"], r["type"], json.dumps(r["default"], default=str), r["limits"] or "-",
              f"tune {r['tune']}" if r["tune"] else "-", r["doc"]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    for cell in cells:
        line = "  ".join(f"{text:<{w}}" for text, w in zip(cell[:5], widths))
        print(f"{indent}{line}  {cell[5]}".rstrip())


def cmd_show(args: argparse.Namespace) -> int:
    kinds = [normalize_kind(args.kind)] if args.kind else list(HOOKS)
    found = [(kind, registry(kind).entry(args.name)) for kind in kinds
             if args.kind or args.name in registry(kind)]
    if not found:
        raise HashbenchError(f"no component is named '{args.name}' (hashbench list shows all)")
    for kind, entry in found:
        print(f"{kind} {entry.name} ({entry.plugin}): {entry.summary}")
        print_params(entry.cls, "  ")
    return 0


# ----------------------------------------------------------------------------- main

def _number(text: str) -> int | float:
    """An argparse type: a whole number, or a fraction (Ray takes fractional CPUs and GPUs)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


_number.__name__ = "number"  # argparse's message: "invalid number value: 'x'"


def _boolean(text: str) -> bool:
    """An argparse type: true/false (also yes/no, on/off, 1/0), any case."""
    value = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(text)
    return value


_boolean.__name__ = "true/false"


def _yaml_value(text: str) -> Any:
    """An argparse type: a YAML scalar, as ``--set`` reads values (``1e-3``, ``[1, 2]``, ``null``)."""
    return parse_set([f"value={text}"])["value"]


_yaml_value.__name__ = "YAML"


def _number_type(cast: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` when ``ok`` holds for it, else ``expected <expected>,
    got <text>`` (argparse names the flag)."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _number_type(int, lambda v: v > 0, "a whole number > 0")
_positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a number > 0")
_level = _number_type(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


def _add_grid_arguments(parser: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """The flags ``run`` and ``ablate`` share: the grid, its features, where and how it runs."""
    parser.add_argument("-c", "--config", help=config_help)
    parser.add_argument("--datasets", help=f"comma-separated dataset names (default: the experiment's, {DEFAULT_DATASET})")
    parser.add_argument("--bits", help="comma-separated code lengths (default: the experiment's, %s)"
                        % ",".join(map(str, DEFAULT_BITS)))
    parser.add_argument("--seeds", help="comma-separated seeds (default: the experiment's, %s)"
                        % ",".join(map(str, DEFAULT_SEEDS)))
    parser.add_argument("--backbone", help="features of shallow methods on image datasets: a timm model name, "
                        "or 'none' for raw pixels (default: the experiment's)")
    parser.add_argument("--pretrained", nargs="?", const="true", metavar="true|false|PATH",
                        help="backbone weights: the backbone's pretrained source, none, or a weights file")
    parser.add_argument("--input-size", type=_positive_int,
                        help="backbone input side in pixels (default: the backbone's)")
    parser.add_argument("--data-root", help="folder holding the datasets (sets HASHBENCH_DATA)")
    parser.add_argument("--set", action="append", metavar="NAME.PARAM=VALUE", help=set_help)
    parser.add_argument("--executor", help="executor name (default: local; hashbench list executors)")
    parser.add_argument("--results-dir", help=f"results folder (default: {DEFAULT_RESULTS_DIR})")
    parser.add_argument("--force", action="store_true", help="redo finished runs (old records are kept aside)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-models", action="store_true",
                        help="keep no fitted model beside the run records (such runs cannot be exported)")
    # every registered executor's options (--jobs, --ray-address, ...), added when the command
    # runs: the registry loads only for the commands that need it
    parser.before_parse.append(_add_executor_options)


def _add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the significance tests: ``--alpha``, ``--confidence``, ``--resamples``."""
    from .stats import DEFAULT_ALPHA, DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES

    parser.add_argument("--alpha", type=_level, default=DEFAULT_ALPHA,
                        help=f"level of the paired tests, Holm-corrected (default {DEFAULT_ALPHA})")
    parser.add_argument("--confidence", type=_level, default=DEFAULT_CONFIDENCE,
                        help=f"level of the intervals (default {DEFAULT_CONFIDENCE})")
    parser.add_argument("--resamples", type=_positive_int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap replicates, >= 100 (default {DEFAULT_RESAMPLES})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hashbench", description="Benchmark suite for learning to hash.")
    from . import __version__
    from .stats import DEFAULT_ALPHA

    parser.add_argument("--version", action="version", version=f"hashbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a grid of methods x datasets x bits x seeds")
    _add_grid_arguments(
        run, f"YAML experiment file (default: {DEFAULT_EXPERIMENT}); CLI flags override it",
        "override a method or dataset parameter, e.g. itq.iterations=100 (repeatable)")
    run.add_argument("--methods", help="comma-separated method names (default: every method that suits the datasets)")
    run.add_argument("--no-table", action="store_true", help="do not rewrite the tables afterwards")
    run.set_defaults(func=cmd_run)

    ablate = sub.add_parser("ablate", help="run one method with config fields varied; write an ablation table")
    ablate.add_argument("method", metavar="METHOD", help="the method to ablate (hashbench list methods)")
    ablate.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2,...",
                        help="a config field of METHOD and its values, read as YAML scalars, e.g. "
                        "iterations=0,5,50; several --vary give the cross product")
    _add_grid_arguments(
        ablate, f"YAML experiment file for datasets, bits, seeds, features (default: {DEFAULT_EXPERIMENT}); "
        "its methods are ignored", "a parameter fixed in every setting, e.g. cibhash.epochs=5 (repeatable)")
    ablate.add_argument("--metric", default="map", help=", ".join(METRICS))
    _add_stats_arguments(ablate)
    ablate.set_defaults(func=cmd_ablate)

    table = sub.add_parser("table", help="aggregate run records into comparison tables")
    table.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    table.add_argument("--metric", default="map", help=", ".join(METRICS))
    table.add_argument("--format", default="md,csv,latex", help="comma-separated: md, csv, latex")
    table.add_argument("--ci", action="store_true",
                       help="show each cell's confidence interval (two-level bootstrap over seeds and queries)")
    _add_stats_arguments(table)
    table.set_defaults(func=cmd_table)

    compare = sub.add_parser("compare", help="paired tests between two rows of the tables (or all rows of each cell)")
    compare.add_argument("labels", nargs="*", metavar="LABEL",
                         help="two row labels, e.g. nsh cibhash, or 'nsh[sorter=exact]' nsh")
    compare.add_argument("--all", action="store_true", help="rank every row of each (dataset, bits) cell instead")
    compare.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, help="results folder; output to its tables/")
    compare.add_argument("--datasets", help="comma-separated datasets or table columns (default: all)")
    compare.add_argument("--bits", help="comma-separated code lengths (default: all)")
    compare.add_argument("--metric", default="map", help=", ".join(METRICS))
    _add_stats_arguments(compare)
    compare.set_defaults(func=cmd_compare)

    tune = sub.add_parser("tune", help="tune methods with an equal budget on the validation split (Optuna)")
    tune.add_argument("methods", metavar="METHODS", help="comma-separated methods to tune")
    tune.add_argument("-c", "--config", help="YAML experiment file (datasets, bits, seeds of the tuned runs, set, "
                      "space: {METHOD.param: RANGE})")
    tune.add_argument("--datasets", help=f"comma-separated datasets (default: the experiment's, {DEFAULT_DATASET})")
    tune.add_argument("--bits", help="comma-separated code lengths")
    tune.add_argument("--seeds", help="seeds of the tuned runs on the test protocol (default: the experiment's)")
    budget = tune.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=_positive_int, help="trials per study (completed or pruned)")
    budget.add_argument("--budget", type=_positive_float, metavar="SECONDS", help="wall-clock seconds of trials per study")
    tune.add_argument("--space", action="append", metavar="[METHOD.]PARAM=RANGE",
                      help="search range: log:1e-5..1e-2, 0.05..1, int:1..8, a|b|c, or off (repeatable)")
    tune.add_argument("--set", action="append", metavar="NAME.PARAM=VALUE", help="a fixed parameter of every trial")
    tune.add_argument("--jobs", type=_positive_int, default=1, help="worker processes sharing each study")
    tune.add_argument("--trial-seed", type=int, default=0, help="training seed of the trials (default 0)")
    tune.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    tune.add_argument("--backbone", help="features of shallow methods on image datasets (as in run)")
    tune.add_argument("--pretrained", nargs="?", const="true", metavar="true|false|PATH")
    tune.add_argument("--input-size", type=_positive_int)
    tune.add_argument("--data-root", help="folder holding the datasets (sets HASHBENCH_DATA)")
    tune.add_argument("--results-dir", help=f"results folder (default: {DEFAULT_RESULTS_DIR}); studies in its tuning/")
    tune.add_argument("--no-final", action="store_true", help="do not run the best config on the test protocol")
    tune.add_argument("--no-progress", action="store_true", help="no per-trial lines")
    tune.add_argument("--no-models", action="store_true", help="the tuned runs keep no fitted model (as in run)")
    tune.set_defaults(func=cmd_tune)

    plot = sub.add_parser("plot", help="draw PR, precision@K, metric-vs-bits and ablation plots from run records")
    plot.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, help="results folder; plots go to its plots/")
    plot.add_argument("--format", default="png,pdf", help="comma-separated: png, pdf, svg")
    plot.add_argument("--metric", default="map", help="for metric-vs-bits and ablations: " + ", ".join(METRICS))
    plot.add_argument("--alpha", type=_level, default=DEFAULT_ALPHA,
                      help="level of the critical-difference diagram's tests (default 0.05)")
    plot.set_defaults(func=cmd_plot)

    report = sub.add_parser("report", help="one self-contained HTML page: tables, plots, protocol, runs")
    report.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR,
                        help="results folder; the page is its report/index.html")
    report.add_argument("--metric", default="map", help=", ".join(METRICS))
    report.add_argument("--screenshot", action="store_true",
                        help="also save report/screenshot.png, rendered by headless Chromium")
    _add_stats_arguments(report)
    report.set_defaults(func=cmd_report)

    migrate = sub.add_parser("migrate", help="rewrite a results folder's run records in the current record version")
    migrate.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    migrate.set_defaults(func=cmd_migrate)

    ev = sub.add_parser("evaluate", help="score codes made anywhere")
    ev.add_argument("--query-codes", required=True)
    ev.add_argument("--db-codes", required=True)
    ev.add_argument("--query-labels", required=True)
    ev.add_argument("--db-labels", required=True)
    ev.add_argument("--bits", type=int, help="code length; needed for packed uint8 codes")
    ev.add_argument("--topk", type=int, help="K of mAP@K (default: the whole database)")
    ev.add_argument("--format", choices=("json", "table"), default="json")
    ev.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="a run's whole encoder as TorchScript and ONNX, checked against the run's codes")
    export.add_argument("run", metavar="RUN", help="a run id, or best:LABEL[@BITS] (e.g. best:cibhash@32)")
    export.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    export.add_argument("--out", help="folder for the files (default: RESULTS/exports/<run-id>)")
    export.add_argument("--format", default="torchscript,onnx", help="comma-separated: torchscript, onnx")
    export.set_defaults(func=cmd_export)

    index = sub.add_parser("index", help="encode a folder of images or a protocol split into a searchable index file")
    index.add_argument("run", metavar="RUN", help="a run id, or best:LABEL[@BITS]")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="a folder of images (any PIL-readable files, recursively)")
    source.add_argument("--split", help="a split of the run's protocol: train, val, query or database")
    index.add_argument("--out", metavar="INDEX", help="the index file (default: RESULTS/indexes/<run-id>-<name>.hbi); "
                       "an existing one is brought up to date")
    index.add_argument("--folder-labels", action="store_true", help="label each image by its first folder")
    index.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="Hamming search of an index by example images")
    search.add_argument("index", metavar="INDEX", help="an index file (hashbench index)")
    search.add_argument("images", metavar="IMAGE", nargs="+", help="query image files")
    search.add_argument("-k", type=_positive_int, default=None, help="results per query (default 10; "
                        "no limit with --radius alone)")
    search.add_argument("--radius", type=int, help="only items within this Hamming distance")
    search.add_argument("--format", choices=("text", "json"), default="text")
    search.set_defaults(func=cmd_search)

    serve = sub.add_parser("serve", help="a web page and JSON API to search an index (hashbench[serve])")
    serve.add_argument("index", metavar="INDEX", help="an index file (hashbench index)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("-k", type=_positive_int, default=10, help="results shown per query (default 10)")
    serve.add_argument("--max-upload-mb", type=_positive_float, default=8.0, help="largest upload (default 8 MB)")
    serve.set_defaults(func=cmd_serve)

    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("kind", nargs="?", help=f"the kind of component: {', '.join(PLURAL.values())}")
    lst.add_argument("--pattern", default="*", help="fnmatch pattern on names, e.g. '*h'")
    lst.add_argument("--params", action="store_true",
                     help="also each parameter: type, default, limits and doc")
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a component's parameters: type, default, limits and doc")
    show.add_argument("name", help="a registered name, e.g. nsh")
    show.add_argument("--kind", help="its kind, when the name is registered under several (methods, sorters, ...)")
    show.set_defaults(func=cmd_show)
    return parser


#: busy-wait spins of an idle OpenMP thread (GNU libgomp, torch's) before it sleeps
SPIN_COUNT = "5000"


def openmp_waiting(environ: Any = os.environ) -> None:
    """How torch's idle OpenMP threads wait, set before torch loads (an existing value wins).

    libgomp's default spins ~300,000 times (milliseconds) before sleeping: on a small shared
    machine that makes small training steps up to ~100x slower when another process holds a
    core. Passive waiting (``OMP_WAIT_POLICY=PASSIVE``) sleeps at once, and then waking the
    threads for each of the many small operations of a training step costs a third of its time
    on a quiet machine; ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT` (tens of microseconds) bridges
    the gaps between consecutive operations, then sleeps. Measured on 2 cores, one epoch on
    banked features: CIBHash 0.72-0.76 s passive -> 0.54-0.56 s, BiHalf 0.23-0.24 s -> 0.145 s;
    with another process busy on a core 1.18x (CIBHash) and 1.46x (BiHalf) slower than passive
    (``GOMP_SPINCOUNT=0`` restores passive waiting on a machine shared with other jobs).
    Results do not depend on it.
    """
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def main(argv: Sequence[str] | None = None) -> int:
    openmp_waiting()
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HashbenchError as exc:
        print(f"hashbench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hashbench: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a folder that vanished: which path, in one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"hashbench: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
