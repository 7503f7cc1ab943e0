"""Seeded, class-balanced sampling used by the protocols to build their splits."""

from __future__ import annotations

import numpy as np

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
