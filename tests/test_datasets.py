"""The bundled protocols: sizes, balance, determinism, split hygiene."""

from __future__ import annotations

import numpy as np
import pytest

import hashbench
from hashbench.components import Split, Splits
from hashbench.config import Experiment
from hashbench.data.synthetic import Synthetic
from hashbench.errors import SplitLeakError
from hashbench.runner import run_grid


def test_digits_protocol():
    protocol = hashbench.create("dataset", "digits")
    splits = protocol.load()
    assert splits.sizes() == {"train": 500, "val": 100, "query": 100, "database": 1597}
    splits.check_disjoint(protocol.disjoint, "digits")
    assert np.bincount(splits.query.labels).tolist() == [10] * 10
    assert np.bincount(splits.train.labels).tolist() == [50] * 10
    assert set(splits.train.index) <= set(splits.database.index)
    assert splits.query.x.shape == (100, 64) and splits.query.x.dtype == np.float32
    assert 0.0 <= splits.database.x.min() and splits.database.x.max() <= 1.0
    again = hashbench.create("dataset", "digits").load()
    assert np.array_equal(again.query.index, splits.query.index)
    other = hashbench.create("dataset", "digits", split_seed=1).load()
    assert not np.array_equal(other.query.index, splits.query.index)


def test_synthetic_multi_label():
    protocol = hashbench.create("dataset", "synthetic", multi_label=True)
    splits = protocol.load()
    assert protocol.multi_label and splits.query.labels.ndim == 2
    assert splits.database.labels.sum(1).min() >= 1
    assert (splits.database.labels.sum(1) == 2).any()


def _split(ids):
    ids = np.asarray(ids)
    return Split(x=np.zeros((len(ids), 2), np.float32), labels=np.zeros(len(ids), np.int64), index=ids)


def test_check_disjoint_names_the_leak():
    splits = Splits(train=_split([0, 1]), val=_split([2]), query=_split([3, 4]), database=_split([0, 1, 4, 5]))
    with pytest.raises(SplitLeakError, match=r"'query' and 'database' must be disjoint but share 1 items \(first ids: \[4\]\)"):
        splits.check_disjoint([("query", "database")], "leaky")
    splits.check_disjoint([("query", "train")], "leaky")


def test_a_leaking_protocol_is_refused(with_plugin, tmp_path):
    class Leaky(Synthetic):
        name = "leaky"
        summary = "puts a query into the database (test only)"

        def load(self):
            s = super().load()
            db = s.database
            leaked = Split(x=np.vstack([db.x, s.query.x[:1]]), labels=np.concatenate([db.labels, s.query.labels[:1]]),
                           index=np.concatenate([db.index, s.query.index[:1]]))
            return Splits(train=s.train, val=s.val, query=s.query, database=leaked)

    with_plugin(register_datasets=lambda: [Leaky])
    grid = Experiment(methods=["lsh"], datasets=["leaky"], bits=[8], seeds=[0]).grid()
    (summary,) = run_grid(grid, tmp_path, progress=False)
    assert summary["status"] == "failed"
    assert "SplitLeakError" in summary["error"] and "'query' and 'database' must be disjoint" in summary["error"]
