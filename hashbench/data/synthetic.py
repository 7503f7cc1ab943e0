"""A tiny Gaussian-blob protocol for tests and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components import Protocol, Splits, check_minimums


class Synthetic(Protocol):
    """Gaussian blobs: ``num_classes`` centres in ``dim`` dimensions, ``per_class`` items each.

    The items of each class are split in order: ``queries_per_class`` queries, ``val_per_class``
    validation items, the rest is the database; train = the first ``train_per_class`` database
    items of each class. With ``multi_label`` every item also gets the label of the next class
    with probability 0.3 (labels are then multi-hot, relevant = shares >= 1 label).
    mAP over the whole database.
    """

    name = "synthetic"
    summary = "Gaussian blobs for tests: a few hundred items, single- or multi-label; mAP@all"
    topk = None
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("val", "database"))

    @dataclass(frozen=True)
    class Config:
        seed: int = 0
        num_classes: int = 4
        dim: int = 16
        per_class: int = 60
        queries_per_class: int = 5
        val_per_class: int = 5
        train_per_class: int = 30
        spread: float = 0.6
        multi_label: bool = False

        def __post_init__(self) -> None:
            check_minimums(self, seed=0, num_classes=2, dim=1, per_class=1, queries_per_class=1, val_per_class=0,
                           train_per_class=1, spread=0)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.num_classes = self.config.num_classes
        self.multi_label = self.config.multi_label
        self.relevance = "shares >= 1 label" if self.multi_label else "same class"

    def load(self) -> Splits:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        centres = rng.normal(size=(cfg.num_classes, cfg.dim))
        y = np.repeat(np.arange(cfg.num_classes), cfg.per_class)
        x = (centres[y] + cfg.spread * rng.normal(size=(len(y), cfg.dim))).astype(np.float32)
        if cfg.multi_label:
            labels = np.zeros((len(y), cfg.num_classes), dtype=np.uint8)
            labels[np.arange(len(y)), y] = 1
            extra = rng.random(len(y)) < 0.3
            labels[np.flatnonzero(extra), (y[extra] + 1) % cfg.num_classes] = 1
        else:
            labels = y.astype(np.int64)
        position = np.tile(np.arange(cfg.per_class), cfg.num_classes)
        ids = np.arange(len(y), dtype=np.int64)
        q_end = cfg.queries_per_class
        v_end = q_end + cfg.val_per_class
        query = ids[position < q_end]
        val = ids[(position >= q_end) & (position < v_end)]
        database = ids[position >= v_end]
        train = ids[(position >= v_end) & (position < v_end + cfg.train_per_class)]

        return Splits.from_ids(x, labels, train, val, query, database)
