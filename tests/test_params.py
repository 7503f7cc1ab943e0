"""Declared parameter limits (hashbench.params): one declaration, one builder, one message form."""

from __future__ import annotations

import dataclasses
import math

import pytest

import hashbench
from hashbench.cli import main
from hashbench.components import build_config
from hashbench.errors import HashbenchError
from hashbench.params import Limits, check_fields, describe, limits_of, param


@dataclasses.dataclass(frozen=True)
class Example:
    rate: float = param(0.5, gt=0, le=1, doc="a rate")
    count: int = param(3, ge=1, doc="a count")
    mode: str = param("a", choices=("a", "b"), doc="a mode")
    sorter: str = param("softsort", registered="sorter", doc="a sorter")
    scale: float | None = param(None, gt=0, doc="unset or positive")
    free: float = 1.0


@dataclasses.dataclass(frozen=True)
class Child(Example):
    count: int = 5  # redeclared with a plain default: the parent's limits still apply


@pytest.mark.parametrize("params, says", [
    ({"rate": 0}, "thing x: rate must be > 0 and <= 1, got 0.0"),
    ({"rate": 1.5}, "thing x: rate must be > 0 and <= 1, got 1.5"),
    ({"rate": math.nan}, "thing x: rate must be a finite number > 0 and <= 1, got nan"),
    ({"count": 0}, "thing x: count must be >= 1, got 0"),
    ({"mode": "c"}, "thing x: mode must be one of a, b, got 'c'"),
    ({"sorter": "softsrot"}, "thing x: sorter must be a registered sorter, got 'softsrot'. Did you mean: softsort?"),
    ({"scale": -1.0}, "thing x: scale must be > 0, got -1.0"),
    ({"free": math.inf}, "thing x: free must be a finite number, got inf"),
])
def test_a_broken_limit_is_one_line_in_one_form(params, says):
    with pytest.raises(HashbenchError) as info:
        build_config(Example, params, "thing x")
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_values_inside_the_limits_build():
    cfg = build_config(Example, {"rate": 1, "count": 1, "mode": "b", "sorter": "exact", "scale": None}, "thing x")
    assert (cfg.rate, cfg.count, cfg.mode, cfg.sorter, cfg.scale) == (1.0, 1, "b", "exact", None)


def test_a_redeclared_field_keeps_the_limits_of_its_base():
    assert limits_of(Child, "count") == Limits(ge=1, doc="a count")
    with pytest.raises(HashbenchError, match="thing y: count must be >= 1, got 0"):
        build_config(Child, {"count": 0}, "thing y")
    assert build_config(Child, {}, "thing y").count == 5


def test_describe_lists_type_default_limits_and_doc():
    rows = {r["name"]: r for r in describe(Example)}
    assert rows["rate"] == {"name": "rate", "type": "float", "default": 0.5, "limits": "> 0 and <= 1", "doc": "a rate",
                            "tune": ""}
    assert rows["sorter"]["limits"] == "a registered sorter"
    assert rows["free"]["limits"] == "" and rows["free"]["doc"] == ""


def test_check_fields_reports_the_field_name():
    with pytest.raises(ValueError, match="^count must be >= 1, got 0$"):
        check_fields(Example(count=0))


@pytest.mark.parametrize("kind", ["method", "sorter", "loss", "dataset"])
def test_every_registered_default_keeps_its_own_limits(kind):
    """A plugin whose default breaks its own declared limit fails here, not in a user's run."""
    for name in hashbench.names(kind):
        cls = hashbench.registry.registry(kind).get(name)
        check_fields(cls.Config())


def test_cli_show_prints_fields_defaults_limits_and_docs(capsys):
    assert main(["show", "nsh"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["positives"])
    assert line.split()[:4] == ["positives", "int", "2", ">="] and "ranks of each sorted list" in line
    assert out.startswith("method nsh (hashbench.plugins.nsh): NSH")


def test_cli_list_params_and_unknown_show(capsys):
    assert main(["list", "sorters", "--params"]) == 0
    out = capsys.readouterr().out
    assert "regularization           str    \"l2\"  one of l2, kl" in out
    assert main(["show", "nosuchthing"]) == 2
    assert "no component is named 'nosuchthing'" in capsys.readouterr().err


def test_every_field_of_every_registered_component_is_documented():
    """`hashbench show` is only as good as the docs: a bundled component's field without a
    param(..., doc=...) fails here (third-party ones are not held to it)."""
    from hashbench.registry import HOOKS, registry

    undocumented = []
    for kind in HOOKS:
        for entry in registry(kind).entries():
            if entry.plugin.startswith("hashbench."):
                undocumented += [f"{kind} {entry.name}: {row['name']}"
                                 for row in describe(entry.cls.Config) if not row["doc"]]
    assert undocumented == []
