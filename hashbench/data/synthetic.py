"""A tiny Gaussian-blob protocol for tests and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components import Protocol, Splits
from ..params import param


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
        seed: int = param(0, ge=0, doc="seed of the generated collection and its splits")
        num_classes: int = param(4, ge=2, doc="Gaussian clusters, one per class")
        dim: int = param(16, ge=1, doc="feature dimensions")
        per_class: int = param(60, ge=1, doc="items generated per class")
        queries_per_class: int = param(5, ge=1, doc="query items per class")
        val_per_class: int = param(5, ge=0, doc="validation items per class")
        train_per_class: int = param(30, ge=1, doc="training items per class (from the database)")
        spread: float = param(0.6, ge=0, doc="standard deviation of each cluster around its centre")
        multi_label: bool = param(False, doc="items carry 1-2 labels (multi-hot) instead of one class")

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
