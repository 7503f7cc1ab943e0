"""GreedyHash's own torch piece, the cubic penalty; the parts it composes with it, the sign layer
with an identity backward and the similarity-preservation loss, are the shared ones of
:mod:`hashbench.layers` (BiHalf trains with the same loss), named here as GreedyHash uses them.

Imported lazily (this module imports torch; the plugin module must not).
"""

from __future__ import annotations

import torch

from hashbench.deep import full_precision
from hashbench.layers import PAIRS, SignSTE, cosine_matrix, sign_ste, similarity_preservation

__all__ = ["PAIRS", "SignSTE", "cosine_matrix", "cubic_penalty", "sign_ste", "similarity_preservation"]


def cubic_penalty(h: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """``mean(| |h| - 1 |^power)``: pulls the relaxed codes toward +-1 (authors' ``loss2``).

    Computed in at least float32 (under autocast ``h`` may be half precision; float64 stays)."""
    return (full_precision(h).abs() - 1.0).abs().pow(power).mean()
