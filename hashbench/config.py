"""Runs as data: the resolved config of one run, experiment files, ``--set`` overrides, run ids.

A run's identity is the hash of its fully resolved config (defaults filled in), so changing any
hyperparameter, or a plugin changing a default, gives a new run id, and an unchanged run is
recognised on rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .components import build_config, check_bits
from .errors import HashbenchError
from .features import FeatureSpec
from .registry import registry

#: bump when what a record means changes (e.g. a metric's definition), so old runs are redone
RECORD_SCHEMA = 1

DEFAULT_DATASET = "fashion-mnist"
#: the experiment file ``hashbench run`` uses when given none
DEFAULT_EXPERIMENT = Path(__file__).parent / "experiments" / "default.yaml"
DEFAULT_BITS = (16, 32, 64)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_RESULTS_DIR = "results"
#: seeds go to numpy and torch generators, which take 0..2**32 - 1
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class RunConfig:
    """One cell of the grid, fully resolved: every parameter has its value, none is implicit."""

    method: str
    dataset: str
    bits: int
    seed: int
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    #: how images become features for a ``features`` method on an image protocol (FeatureSpec); else {}
    features: dict[str, Any] = field(default_factory=dict)
    #: a name the tables show instead of the changed parameters (``nsh[tuned]``); None: none.
    #: Part of the run's identity only when set (configs without one hash as they always did)
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": RECORD_SCHEMA, **dataclasses.asdict(self)}
        if self.tag is None:
            del out["tag"]
        return out

    @property
    def run_id(self) -> str:
        """``<method>-<dataset>-<bits>b-s<seed>-<first 12 hex digits of the config's sha256>``."""
        return run_id_of(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = {k: v for k, v in data.items() if k != "schema"}
        return cls(**data)


def run_id_of(config: dict[str, Any]) -> str:
    """The run id of a resolved config as :meth:`RunConfig.to_dict` gives it (or as a record
    stores it): ``<method>-<dataset>-<bits>b-s<seed>-<first 12 hex digits of its sha256>``."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return f"{config['method']}-{config['dataset']}-{config['bits']}b-s{config['seed']}-{digest}"


@dataclass
class Experiment:
    """A declarative grid: methods x datasets x bits x seeds, with parameter overrides.

    ``overrides`` maps ``NAME.param`` (NAME a method or a dataset) to a value, as ``--set`` does.
    """

    methods: list[str]
    datasets: list[str] = field(default_factory=lambda: [DEFAULT_DATASET])
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    overrides: dict[str, Any] = field(default_factory=dict)
    #: FeatureSpec fields (backbone, pretrained, input_size) for features methods on image protocols
    features: dict[str, Any] = field(default_factory=dict)
    #: every run's tag (:attr:`RunConfig.tag`), e.g. "tuned"; None: untagged
    tag: str | None = None

    def grid(self) -> list[RunConfig]:
        """Expand and resolve the grid; raises one-line HashbenchErrors for any bad entry."""
        methods, datasets = registry("method"), registry("dataset")
        method_classes = {m: methods.get(m) for m in _unique(self.methods, "methods")}
        dataset_classes = {d: datasets.get(d) for d in _unique(self.datasets, "datasets")}
        bits = [check_bits(b) for b in _unique(self.bits, "bits")]
        seeds = _unique(self.seeds, "seeds")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise HashbenchError(f"seeds must be whole numbers in 0..{MAX_SEED} (2**32 - 1), got {seed!r}")
        per_component = split_overrides(self.overrides)
        for name, params in per_component.items():
            if name not in methods and name not in datasets:
                raise HashbenchError(
                    f"--set {name}.…: '{name}' is neither a method nor a dataset (hashbench list shows all)"
                )
            if name not in method_classes and name not in dataset_classes:  # not in the grid: still checked
                kind = "method" if name in methods else "dataset"
                _resolve(registry(kind).get(name), params, f"{kind} {name}")
        method_params = {
            m: _resolve(cls, per_component.get(m, {}), f"method {m}") for m, cls in method_classes.items()
        }
        dataset_params = {
            d: _resolve(cls, per_component.get(d, {}), f"dataset {d}") for d, cls in dataset_classes.items()
        }
        spec = None
        features: dict[tuple[str, str], dict[str, Any]] = {}
        for d, dataset_cls in dataset_classes.items():
            for m, method_cls in method_classes.items():
                wants = getattr(method_cls, "input", "features")
                if wants not in suited_inputs(dataset_cls):
                    raise HashbenchError(
                        f"method {m} takes {wants} but dataset {d} provides {', '.join(dataset_cls.provides)}"
                    )
                if wants == "features" and "images" in dataset_cls.provides:
                    spec = spec or FeatureSpec.resolve(self.features)
                    features[m, d] = spec.to_dict()
        if self.tag is not None and (not isinstance(self.tag, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", self.tag)):
            raise HashbenchError(f"tag must be a lower-case name (letters, digits, - and _), got {self.tag!r}")
        return [
            RunConfig(m, d, b, s, method_params[m], dataset_params[d], features.get((m, d), {}), self.tag)
            for d in dataset_classes
            for m in method_classes
            for b in bits
            for s in seeds
        ]


def suited_inputs(protocol_cls: type) -> set[str]:
    """What a protocol can feed a method: what it provides, plus features derived from images."""
    provided = set(protocol_cls.provides)
    return provided | {"features"} if "images" in provided else provided


def _unique(values: list[Any], what: str) -> list[Any]:
    if not values:
        raise HashbenchError(f"the experiment names no {what}")
    return list(dict.fromkeys(values))


def _resolve(cls: type, params: dict[str, Any], owner: str) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(build_config(cls.Config, params, owner))))


def split_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"itq.iterations": 100}`` -> ``{"itq": {"iterations": 100}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        name, dot, param = str(key).partition(".")
        if not dot or not name or not param:
            raise HashbenchError(f"override '{key}' must look like NAME.param (e.g. itq.iterations)")
        out.setdefault(name, {})[param] = value
    return out


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Parse ``["itq.iterations=100", "digits.split_seed=1"]``; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise HashbenchError(f"--set expects NAME.param=VALUE, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise HashbenchError(f"--set {key}: cannot read value '{raw}'") from None
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        out[key.strip()] = value
    return out


def parse_list(text: str, what: str, kind: type = str) -> list[Any]:
    """Parse a comma-separated CLI list (``"16,32,64"``) into values of ``kind``; an empty one
    (``""``, ``","``) is an error, never "the default"."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise HashbenchError(f"--{what} is empty: give at least one value")
    if kind is int:
        try:
            return [int(t) for t in items]
        except ValueError:
            raise HashbenchError(f"--{what} expects comma-separated whole numbers, got '{text}'") from None
    return items


#: keys an experiment file may hold, and their expected types
EXPERIMENT_KEYS: dict[str, Any] = {
    "methods": list, "datasets": list, "bits": list, "seeds": list,
    "set": dict, "executor": str, "executor_params": dict, "results_dir": str,
    "backbone": (str, type(None)), "pretrained": (bool, str), "input_size": (int, type(None)),
    "tag": str, "space": dict,
}
FEATURE_KEYS = ("backbone", "pretrained", "input_size")


def load_experiment_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML experiment file with the safe loader and check its keys and types.

    Lists may also be written as comma-separated strings (``bits: 16,32``) or single values.
    Returns a dict with a subset of EXPERIMENT_KEYS.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HashbenchError(f"cannot read experiment file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise HashbenchError(f"experiment file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise HashbenchError(f"experiment file {path}: {problem}{where}") from None
    if data is None or data == {}:
        raise HashbenchError(f"experiment file {path} is empty: give at least one of {', '.join(EXPERIMENT_KEYS)}")
    if not isinstance(data, dict):
        raise HashbenchError(f"experiment file {path}: expected a mapping of keys, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in EXPERIMENT_KEYS:
            raise HashbenchError(
                f"experiment file {path}: unknown key '{key}' (keys: {', '.join(EXPERIMENT_KEYS)})"
            )
        expected = EXPERIMENT_KEYS[key]
        if expected is list:
            whole = key in ("bits", "seeds")
            if isinstance(value, str):
                try:
                    value = parse_list(value, key, int if whole else str)
                except HashbenchError as exc:
                    raise HashbenchError(f"experiment file {path}: '{key}': {exc}") from None
            elif isinstance(value, dict):
                raise HashbenchError(f"experiment file {path}: '{key}' must be a list, got a mapping")
            elif not isinstance(value, list):
                value = [value]
            if not value:
                raise HashbenchError(f"experiment file {path}: '{key}' is empty: give at least one value")
            for item in value:
                ok = (isinstance(item, int) and not isinstance(item, bool)) if whole else (
                    isinstance(item, str) and item.strip() != "")
                if not ok:
                    raise HashbenchError(
                        f"experiment file {path}: '{key}' holds {item!r}; each item must be "
                        + ("a whole number" if whole else "a name")
                    )
        elif not isinstance(value, expected) or (isinstance(value, bool) and key == "input_size"):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise HashbenchError(
                f"experiment file {path}: '{key}' must be a {names}, got {type(value).__name__}"
            )
        out[key] = value
    return out
