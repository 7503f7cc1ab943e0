"""Base classes of the pluggable components and the data they exchange.

Data flows one way: a :class:`Protocol` loads :class:`Splits`; a :class:`HashMethod` fits on the
train split and encodes the query and database splits to bool codes; the evaluator scores them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from .errors import HashbenchError, SplitLeakError
from .evaluate import check_bits
from .params import check_fields


def _accepts(annotation: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits a simple field annotation; returns (ok, converted value)."""
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            ok, converted = _accepts(arm, value)
            if ok:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            return True, tuple(value) if origin is tuple else list(value)
        return False, value
    return True, value  # annotations we do not check


def build_config(config_cls: type, params: dict[str, Any], owner: str) -> Any:
    """Build ``config_cls(**params)``: the one builder of every component's Config.

    One-line HashbenchErrors for unknown keys, wrong types, and values that break a field's
    declared limits (:mod:`hashbench.params`) or the Config's own ``__post_init__`` rules
    (ValueError), all in the form ``<owner>: <field> must be ..., got ...``; ``owner`` names
    the component, e.g. ``"method itq"``.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    checked = {}
    for key, value in params.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            known = ", ".join(fields) or "none"
            raise HashbenchError(f"{owner} has no parameter '{key}'.{hint} (parameters: {known})")
        ok, converted = _accepts(hints.get(key, Any), value)
        if not ok:
            raise HashbenchError(
                f"{owner}: parameter '{key}' expects {_type_name(hints[key])}, got {value!r}"
            )
        checked[key] = converted
    try:
        config = config_cls(**checked)
        check_fields(config)
    except ValueError as exc:  # a declared limit, or a rule of the Config's __post_init__
        raise HashbenchError(f"{owner}: {exc}") from None
    return config


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class Component:
    """A registered component: ``name``, ``summary`` and a ``Config`` dataclass of parameters."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, **params: Any) -> None:
        self.config = build_config(self.Config, params, f"{self.kind} {self.name}")

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The parameters with their defaults, as a plain dict."""
        return dataclasses.asdict(cls.Config())


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Split:
    """One split of a protocol.

    x: items, e.g. float features (N, D); labels: int class ids (N,) or multi-hot {0,1} (N, C);
    index: int64 (N,) ids of the items in the protocol's source collection, used to check
    that splits are disjoint.
    """

    x: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.index)
        if len(self.x) != n or len(self.labels) != n:
            raise ValueError(
                f"split arrays differ in length: x {len(self.x)}, labels {len(self.labels)}, index {n}"
            )

    def __len__(self) -> int:
        return len(self.index)


SPLIT_NAMES = ("train", "val", "query", "database")


@dataclass(frozen=True)
class Splits:
    """The four splits of a protocol: train (fit), val (model selection), query, database."""

    train: Split
    val: Split
    query: Split
    database: Split

    @classmethod
    def from_ids(cls, x: Any, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                 query: np.ndarray, database: np.ndarray) -> "Splits":
        """The four splits of a collection held in memory, by item ids (int64 arrays into x)."""
        def take(ids: np.ndarray) -> Split:
            return Split(x=x[ids], labels=labels[ids], index=ids)

        return cls(train=take(train), val=take(val), query=take(query), database=take(database))

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def check_disjoint(self, pairs: Iterable[tuple[str, str]], protocol: str) -> None:
        """Raise :class:`SplitLeakError` if any declared pair of splits shares an item."""
        for a, b in pairs:
            shared = np.intersect1d(getattr(self, a).index, getattr(self, b).index)
            if len(shared):
                raise SplitLeakError(
                    f"protocol {protocol}: splits '{a}' and '{b}' must be disjoint but share "
                    f"{len(shared)} items (first ids: {shared[:5].tolist()}); refusing to run"
                )


class Protocol(Component):
    """A dataset with its evaluation protocol (see ``register_datasets``)."""

    kind: ClassVar[str] = "dataset"
    num_classes: ClassVar[int] = 0
    multi_label: ClassVar[bool] = False
    topk: ClassVar[int | None] = None
    relevance: ClassVar[str] = "same class"
    #: what ``Split.x`` holds; a method suits the protocol when its ``input`` is listed here
    provides: ClassVar[tuple[str, ...]] = ("features",)
    disjoint: ClassVar[tuple[tuple[str, str], ...]] = (("query", "database"), ("query", "train"), ("query", "val"))
    #: published mAP for exactly this protocol: {method: {bits: value}}, and where it comes from
    published: ClassVar[dict[str, dict[int, float]]] = {}
    published_source: ClassVar[str] = ""

    def load(self) -> Splits:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a run record stores about the protocol besides its parameters."""
        return {
            "num_classes": self.num_classes,
            "multi_label": self.multi_label,
            "topk": self.topk,
            "relevance": self.relevance,
            "disjoint": [list(p) for p in self.disjoint],
        }


# ----------------------------------------------------------------------------- methods

class HashMethod(Component):
    """A learning-to-hash method (see ``register_methods``).

    Subclasses implement ``fit(train, val)`` and ``encode(x) -> bool (N, bits)``; ``self.bits``
    and ``self.seed`` are set, and ``self.rng`` is a numpy Generator seeded with ``seed``.
    """

    kind: ClassVar[str] = "method"
    input: ClassVar[str] = "features"
    #: a folder private to the run, set by the runner before ``fit`` (checkpoints); may be None
    workdir: Any = None

    def __init__(self, bits: int, seed: int = 0, **params: Any) -> None:
        super().__init__(**params)
        self.bits = check_bits(bits)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def fit(self, train: Split, val: Split | None = None) -> None:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """What the run record keeps about training (e.g. per-epoch loss terms); {} if nothing."""
        return {}

    def fitted_state(self) -> dict[str, Any]:
        """What ``encode`` needs after ``fit``, as plain data: {name: numpy array, torch
        tensor, number, string, None, or a dict/list of those}; :meth:`restore` takes it back.
        The runner saves it beside the run record (``runs/<run-id>.model.pt``, loaded with
        ``torch.load(weights_only=True)``) so that ``hashbench export`` can rebuild the encoder.

        Default (scikit-learn's convention): every public attribute whose name ends in ``_``
        (``mean_``, ``components_``, ...). HashbenchError when there is none (not fitted, or a
        method that keeps its state elsewhere and does not override this)."""
        state = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
        if not state:
            raise HashbenchError(f"method {self.name}: no fitted state to save (fit it first, or override fitted_state)")
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Make this unfitted instance the fitted one whose :meth:`fitted_state` was ``state``
        (``encode`` works without ``fit``). Default: set each entry as an attribute, tensors as
        numpy arrays."""
        for key, value in state.items():
            setattr(self, key, value.numpy() if hasattr(value, "numpy") and hasattr(value, "dtype") else value)

    def encoder(self) -> Any:
        """The fitted method's code function as a ``torch.nn.Module`` (what ``hashbench export``
        traces): forward(x) -> bool tensor (B, bits), equal bit for bit to ``encode`` on the same
        input. ``x``: float32 features (B, D) for ``input = "features"``; the backbone's output
        (pooled (B, F) or tokens (B, T, C)) for deep methods. Default: HashbenchError (the
        method cannot be exported)."""
        raise HashbenchError(f"method {self.name}: it has no encoder module (HashMethod.encoder), so it cannot be exported")

    def cache_reads(self) -> list[Any]:
        """The frozen-backbone outputs that ``fit``/``encode`` will read from the disk cache
        (:class:`hashbench.banks.CacheRead` items), so that the runner computes those of a whole
        grid beforehand, one backbone pass per images. Default: none."""
        return []


# ----------------------------------------------------------------------------- executors

class Executor(Component):
    """Runs a function over tasks (see ``register_executors``)."""

    kind: ClassVar[str] = "executor"
    #: command-line flags of Config fields that are not ``--<field-with-dashes>``: field ->
    #: ``"--flag"``, or None to keep the field to experiment files (``hashbench.cli.executor_flags``)
    cli_options: ClassVar[dict[str, str | None]] = {}

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        raise NotImplementedError
