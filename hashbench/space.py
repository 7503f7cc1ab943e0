"""Search spaces as data: the range a tunable Config field is searched over by ``hashbench tune``.

A field declares its range next to its default and limits (:func:`hashbench.params.param`)::

    lr: float = param(1e-3, gt=0, tune=log_uniform(1e-5, 1e-2), doc="learning rate")
    sorter: str = param("softsort", registered="sorter", tune=choice("softsort", "exact"), doc=...)

:func:`declared_space` reads a Config's ranges; ``--space KEY=RANGE`` (or ``space:`` in an
experiment file) overrides or narrows them, ``KEY=off`` drops one (:func:`parse_range`,
:func:`resolve_space`). Range texts: ``log:1e-5..1e-2`` (log-uniform float), ``0.05..1``
(uniform float), ``int:1..8`` (integers, uniform), ``int-log:1..64``, ``softsort|exact``
(categorical; values read as YAML scalars). ``describe()`` writes a range back in that form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import HashbenchError

KINDS = ("float", "int", "choice")


@dataclass(frozen=True)
class Range:
    """A search range: ``kind`` float (low..high, log-uniform with ``log``), int (low..high
    inclusive, ``log`` for a log scale) or choice (``choices``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HashbenchError(f"a range's kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "choice":
            if len(self.choices) < 2:
                raise HashbenchError(f"a choice needs at least 2 values, got {list(self.choices)!r}")
            return
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (self.low, self.high)):
            raise HashbenchError(f"a range needs finite low and high, got {self.low!r}..{self.high!r}")
        if not self.low < self.high:
            raise HashbenchError(f"a range needs low < high, got {self.low:g}..{self.high:g}")
        if self.log and self.low <= 0:
            raise HashbenchError(f"a log range needs low > 0, got {self.low:g}")
        if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise HashbenchError(f"an int range needs whole bounds, got {self.low:g}..{self.high:g}")

    def describe(self) -> str:
        """The range as ``--space`` spells it: ``log:1e-05..0.01``, ``int:1..8``, ``a|b``."""
        if self.kind == "choice":
            return "|".join(_text(c) for c in self.choices)
        prefix = {("float", True): "log:", ("float", False): "", ("int", False): "int:",
                  ("int", True): "int-log:"}[self.kind, self.log]
        return f"{prefix}{_text(self.low)}..{_text(self.high)}"

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an Optuna trial proposes for field ``name``."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def uniform(low: float, high: float) -> Range:
    return Range("float", low, high)


def log_uniform(low: float, high: float) -> Range:
    return Range("float", low, high, log=True)


def int_range(low: int, high: int, log: bool = False) -> Range:
    return Range("int", low, high, log=log)


def choice(*values: Any) -> Range:
    return Range("choice", choices=tuple(values))


def parse_range(text: str, what: str) -> Range | None:
    """A range from its text (see the module doc); None for ``off``. HashbenchError naming
    ``what`` when it is not one."""
    import yaml

    raw = text.strip()
    if raw.lower() in ("off", "none"):
        return None
    try:
        if "|" in raw:
            return choice(*(yaml.safe_load(v.strip()) for v in raw.split("|")))
        kind, _, bounds = raw.rpartition(":")
        low, sep, high = bounds.partition("..")
        if not sep:
            raise ValueError
        lo, hi = float(low), float(high)
        if kind in ("int", "int-log"):
            return int_range(int(lo), int(hi), log=kind == "int-log") if lo.is_integer() and hi.is_integer() \
                else Range("int", lo, hi)
        if kind not in ("", "log"):
            raise ValueError
        return Range("float", lo, hi, log=kind == "log")
    except (ValueError, yaml.YAMLError):
        raise HashbenchError(f"{what}: '{text}' is not a range (log:1e-5..1e-2, 0.05..1, int:1..8, "
                             "int-log:1..64, a|b|c, or off)") from None
    except HashbenchError as exc:
        raise HashbenchError(f"{what}: {exc}") from None


def declared_space(config_cls: type) -> dict[str, Range]:
    """The ranges the fields of ``config_cls`` declare (``param(..., tune=...)``), in field order."""
    from .params import limits_of

    out = {}
    for field in dataclasses.fields(config_cls):
        tune = limits_of(config_cls, field.name).tune
        if tune is not None:
            out[field.name] = tune
    return out


def resolve_space(owner: str, config_cls: type, overrides: Mapping[str, Range | None] | None = None) -> dict[str, Range]:
    """The declared space of ``config_cls`` with ``overrides`` applied (a Range replaces or adds
    a field's range, None drops it); HashbenchError for a field ``config_cls`` does not have,
    or a range outside the field's declared limits."""
    from .params import limits_of

    fields = {f.name for f in dataclasses.fields(config_cls)}
    space = declared_space(config_cls)
    for name, rng in (overrides or {}).items():
        if name not in fields:
            raise HashbenchError(f"--space {name}: {owner} has no parameter '{name}' "
                                 f"(its fields: {', '.join(sorted(fields))})")
        if rng is None:
            space.pop(name, None)
            continue
        limits = limits_of(config_cls, name)
        ends = list(rng.choices) if rng.kind == "choice" else [rng.low, rng.high]
        for value in ends:
            problem = limits.violation(value) if not (limits.registered and rng.kind != "choice") else None
            if problem:
                raise HashbenchError(f"--space {name}={rng.describe()}: {owner}: {name} {problem}")
        space[name] = rng
    return space


def parse_space(items: Sequence[str]) -> dict[str, Range | None]:
    """``["lr=log:1e-5..1e-2", "sorter=softsort|exact", "epochs=off"]`` -> {name: Range or None}."""
    out: dict[str, Range | None] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise HashbenchError(f"--space expects KEY=RANGE, got '{item}'")
        out[key.strip()] = parse_range(text, f"--space {key.strip()}")
    return out
