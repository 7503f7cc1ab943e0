"""scikit-learn's bundled 8x8 digits as a small offline protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components import Protocol, Splits
from .splits import PerClassConfig, per_class_sample


class Digits(Protocol):
    """1,797 8x8 grey digits (UCI, bundled with scikit-learn), 64 pixel features in [0, 1].

    Split (seeded by ``split_seed``; defaults give these sizes):
    query 100 (10/class) and validation 100 (10/class), drawn first and disjoint;
    database = the other 1,597 items; train = 500 (50/class) drawn from the database
    (as in the common CIFAR-10 protocol, the database includes the training items).
    mAP over the whole database (topk None); relevant = same class.
    """

    name = "digits"
    summary = "scikit-learn 8x8 digits: 100 queries, 100 val, 500 train, 1,597 database; mAP@all"
    num_classes = 10
    multi_label = False
    topk = None
    relevance = "same class"
    disjoint = (
        ("query", "database"), ("query", "train"), ("query", "val"),
        ("val", "database"), ("val", "train"),
    )

    @dataclass(frozen=True)
    class Config(PerClassConfig):
        """The per-class split parameters (and their limits) with this protocol's sizes."""

        queries_per_class: int = 10
        train_per_class: int = 50
        val_per_class: int = 10

    def load(self) -> Splits:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = (data.data / 16.0).astype(np.float32)
        y = data.target.astype(np.int64)
        cfg = self.config
        rng = np.random.default_rng(cfg.split_seed)
        everything = np.arange(len(y), dtype=np.int64)
        query = per_class_sample(y, everything, cfg.queries_per_class, rng)
        rest = np.setdiff1d(everything, query)
        val = per_class_sample(y, rest, cfg.val_per_class, rng)
        database = np.setdiff1d(rest, val)
        train = per_class_sample(y, database, cfg.train_per_class, rng)

        return Splits.from_ids(x, y, train, val, query, database)
