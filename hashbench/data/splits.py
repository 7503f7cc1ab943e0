"""Seeded, class-balanced sampling used by the protocols to build their splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..params import param
from ..errors import HashbenchError


def per_class_sample(labels: np.ndarray, pool: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``per_class`` items of every class from ``pool`` without replacement.

    labels: int class ids (N,) of the whole collection; pool: int64 ids (into labels) to draw from.
    Returns the drawn ids, sorted ascending (int64). Raises HashbenchError if a class has too few.
    """
    pool = np.asarray(pool, dtype=np.int64)
    drawn = []
    for cls in np.unique(labels):
        members = pool[labels[pool] == cls]
        if len(members) < per_class:
            raise HashbenchError(
                f"class {cls} has {len(members)} items left but the protocol needs {per_class}"
            )
        drawn.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(drawn)) if drawn else np.empty(0, np.int64)


@dataclass(frozen=True)
class PerClassConfig:
    """Parameters of a class-balanced protocol: the split seed and the items per class drawn."""

    split_seed: int = param(0, ge=0, doc="seed of the class-balanced draw of the splits")
    queries_per_class: int = param(100, ge=1, doc="query images drawn per class")
    train_per_class: int = param(500, ge=1, doc="training images drawn per class (from the database)")
    val_per_class: int = param(100, ge=0, doc="validation images drawn per class (0: no validation split)")


def standard_split(labels: np.ndarray, cfg: PerClassConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The common CIFAR-10 "1k/59k" recipe over a whole collection, seeded by ``cfg.split_seed``.

    Queries ``queries_per_class`` per class from everything; database = all but the queries;
    train ``train_per_class`` per class from the database; validation ``val_per_class`` per class
    from the database minus train. Returns int64 ids (train, val, query, database), sorted.
    """
    rng = np.random.default_rng(cfg.split_seed)
    everything = np.arange(len(labels), dtype=np.int64)
    query = per_class_sample(labels, everything, cfg.queries_per_class, rng)
    database = np.setdiff1d(everything, query)
    train = per_class_sample(labels, database, cfg.train_per_class, rng)
    val = per_class_sample(labels, np.setdiff1d(database, train), cfg.val_per_class, rng)
    return train, val, query, database
