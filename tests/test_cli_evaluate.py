"""`hashbench evaluate`: codes and labels from .npy files, in every accepted encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashbench.evaluate import evaluate, pack_codes

KEYS = {"map", "topk", "map_full", "map_tie_aware", "precision_h2", "recall_h2"}


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    bits = 12
    q = rng.integers(0, 2, size=(15, bits)).astype(bool)
    db = rng.integers(0, 2, size=(80, bits)).astype(bool)
    ql, dbl = rng.integers(0, 3, 15), rng.integers(0, 3, 80)
    paths = {}
    for name, arr in {"q01": q.astype(np.int64), "db01": db.astype(np.int64),
                      "qpm": np.where(q, 1.0, -1.0), "dbpm": np.where(db, 1, -1).astype(np.int8),
                      "qpack": pack_codes(q), "dbpack": pack_codes(db), "ql": ql, "dbl": dbl,
                      "dbl_short": dbl[:-1], "ml_q": np.eye(3, dtype=np.uint8)[ql]}.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    expected = evaluate(pack_codes(q), pack_codes(db), ql, dbl, bits=bits, topk=20)
    return paths, expected, bits


def _args(paths, q, db, ql="ql", dbl="dbl"):
    return ["evaluate", "--query-codes", str(paths[q]), "--db-codes", str(paths[db]),
            "--query-labels", str(paths[ql]), "--db-labels", str(paths[dbl])]


@pytest.mark.parametrize("q, db, extra", [
    ("q01", "db01", []), ("qpm", "dbpm", []), ("qpack", "dbpack", ["--bits", "12"]),
    ("q01", "dbpack", ["--bits", "12"]),
])
def test_every_code_encoding_gives_the_same_metrics(cli, arrays, q, db, extra):
    paths, expected, _ = arrays
    code, out, err = cli(*_args(paths, q, db), "--topk", "20", *extra)
    assert code == 0, err
    result = json.loads(out)
    assert KEYS <= set(result)
    for key in KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-12)
    assert result["topk"] == 20


def test_table_format(cli, arrays):
    paths, expected, _ = arrays
    code, out, _ = cli(*_args(paths, "q01", "db01"), "--format", "table")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("map_full "))
    assert float(row.split()[1]) == pytest.approx(expected["map_full"], abs=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(dbl="dbl_short"), "80"),                       # labels shorter than codes
    (dict(ql="ml_q"), "label"),                          # multi-hot queries, class-id database
    (dict(q="qpack"), "columns fit neither"),            # packed codes with the wrong --bits
    (dict(q="missing"), "no such file"),
])
def test_bad_input_is_one_line_exit_2(cli, arrays, tmp_path, change, message, one_line_error):
    paths, _, _ = arrays
    paths = {**paths, "missing": tmp_path / "nope.npy"}
    names = {"q": "q01", "db": "db01", "ql": "ql", "dbl": "dbl"} | change
    extra = ["--bits", "16"] if change.get("q") == "qpack" else []
    code, _, err = cli(*_args(paths, **names), *extra)
    assert code == 2
    assert message in one_line_error(err)


def test_pickled_arrays_are_refused(cli, arrays, tmp_path, one_line_error):
    paths, _, _ = arrays
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([object()], dtype=object), allow_pickle=True)
    code, _, err = cli(*_args({**paths, "evil": evil}, "evil", "db01"))
    assert code == 2 and "cannot read" in one_line_error(err)
