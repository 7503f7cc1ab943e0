"""Declared parameters: a Config field's limits and doc, written once next to the field.

A component's ``Config`` is a frozen dataclass; a field declared with :func:`param` carries its
limits and a one-line doc in the field's metadata::

    @dataclass(frozen=True)
    class Config:
        temperature: float = param(0.3, gt=0, doc="NT-Xent temperature")
        score: str = param("dot", choices=("dot", "cosine"), doc="score of rank r")
        sorter: str = param("softsort", registered="sorter", doc="differentiable sorter")

:func:`hashbench.components.build_config`, the one builder of every component's Config, checks
them (:func:`check_fields`) with one message form, ``<owner>: <field> must be <limits>, got
<value>`` (e.g. ``method cibhash: temperature must be > 0, got -1``). Every float value must be
finite, declared or not. Rules that tie several fields together stay in the Config's
``__post_init__``, which raises ``ValueError("<field> must ..., got ...")``; the builder adds
the owner. :func:`describe` lists the fields for ``hashbench show``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import HashbenchError

METADATA_KEY = "hashbench"


@dataclass(frozen=True)
class Limits:
    """What a field's value must satisfy; None = no limit of that sort.

    gt/ge/lt/le: bounds for numbers (a None value passes: ``float | None`` fields mean "unset");
    choices: the allowed values; registered: a component kind whose registered names are
    the allowed values (checked against the registry when the Config is built); doc: one line;
    tune: the range ``hashbench tune`` searches (:mod:`hashbench.space`), None = not tuned.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    registered: str | None = None
    doc: str = ""
    tune: Any = None  #: the field's search range for ``hashbench tune`` (a hashbench.space.Range)

    def describe(self) -> str:
        """The limits in words, e.g. ``> 0``, ``>= 1 and <= 64``, ``one of dot, cosine``; '' if none."""
        parts = [f"{op} {_number(bound)}" for op, bound in
                 ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)) if bound is not None]
        if self.choices is not None:
            parts.append("one of " + ", ".join(str(c) for c in self.choices))
        if self.registered is not None:
            parts.append(f"a registered {self.registered}")
        return " and ".join(parts)

    def violation(self, value: Any) -> str | None:
        """Why ``value`` breaks these limits (``must be ...``), or None when it keeps them."""
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(str(c) for c in self.choices)}, got {value!r}"
        if self.registered is not None and value is not None:
            return _unregistered(self.registered, value)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return f"must be a finite number{' ' + self.describe() if self.describe() else ''}, got {value!r}"
        bounds = ((self.gt, lambda b: value > b), (self.ge, lambda b: value >= b),
                  (self.lt, lambda b: value < b), (self.le, lambda b: value <= b))
        if not all(ok(b) for b, ok in bounds if b is not None):
            return f"must be {self.describe()}, got {value!r}"
        return None


def _unregistered(kind: str, value: Any) -> str | None:
    """Why ``value`` is not a registered name of ``kind`` (with close names), or None if it is
    (exactly, or claimed by a family class such as the timm backbone)."""
    import difflib

    from .registry import PLURAL, registry

    known = registry(kind)
    if isinstance(value, str):
        try:
            known.entry(value)
            return None
        except HashbenchError:
            pass
    close = difflib.get_close_matches(str(value), known.names(), n=3, cutoff=0.5)
    hint = f". Did you mean: {', '.join(close)}?" if close else ""
    return f"must be a registered {kind}, got {value!r}{hint} (hashbench list {PLURAL[kind]})"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def param(default: Any = dataclasses.MISSING, *, doc: str = "", gt: float | None = None,
          ge: float | None = None, lt: float | None = None, le: float | None = None,
          choices: tuple[Any, ...] | list[Any] | None = None, registered: str | None = None,
          tune: Any = None) -> Any:
    """A dataclass field with declared limits, a doc and, optionally, its search range
    (``tune``: a :class:`hashbench.space.Range`; see the module docstring)."""
    limits = Limits(gt=gt, ge=ge, lt=lt, le=le, choices=tuple(choices) if choices is not None else None,
                    registered=registered, doc=doc, tune=tune)
    return dataclasses.field(default=default, metadata={METADATA_KEY: limits})


def limits_of(config_cls: type, name: str) -> Limits:
    """The limits declared for field ``name`` of ``config_cls`` or, when a subclass redeclares
    the field with a plain default (``schedule: str = "constant"``), of the nearest base class
    that declared them with :func:`param`; empty Limits when none did."""
    for cls in config_cls.__mro__:
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None and METADATA_KEY in field.metadata:
            return field.metadata[METADATA_KEY]
    return Limits()


def check_fields(config: Any) -> None:
    """Raise ``ValueError("<field> must ..., got ...")`` for the first field of ``config``
    that breaks its declared limits or holds a float that is not finite."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        problem = limits_of(type(config), field.name).violation(value)
        if problem is None and isinstance(value, float) and not math.isfinite(value):
            problem = f"must be a finite number, got {value!r}"
        if problem is not None:
            raise ValueError(f"{field.name} {problem}")


def describe(config_cls: type) -> list[dict[str, Any]]:
    """One row per field of ``config_cls``: name, type, default, limits (words), doc, tune
    (its search range as ``--space`` spells it, '' when not tuned)."""
    import typing

    hints = typing.get_type_hints(config_cls)
    defaults = config_cls()
    rows = []
    for field in dataclasses.fields(config_cls):
        limits = limits_of(config_cls, field.name)
        annotation = hints.get(field.name, Any)
        rows.append({
            "name": field.name,
            "type": getattr(annotation, "__name__", None) or str(annotation).replace("typing.", ""),
            "default": getattr(defaults, field.name),
            "limits": limits.describe(),
            "doc": limits.doc,
            "tune": limits.tune.describe() if limits.tune is not None else "",
        })
    return rows
