"""CIBHash's torch pieces: the hash head and the training codes, through the shared
straight-through sign (:func:`hashbench.layers.sign_ste`).

The loss terms are the shared ``nt_xent`` and ``bernoulli_kl`` of :mod:`hashbench.losses`.

Shapes: features f float (B, F); probabilities p = sigmoid(head(f)) float (B, bits); training
codes z float (B, bits) in {-1, +1}; test codes bool (B, bits).
"""

from __future__ import annotations

import torch
from torch import nn

from hashbench.layers import sign_ste


def build_head(feature_dim: int, bits: int, hidden: int = 1024) -> nn.Module:
    """Linear(F, 1024) -> ReLU -> Linear(1024, bits): the logits whose sigmoid is p (reference code)."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


def train_codes(p: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Training codes in {-1, +1} with straight-through gradient w.r.t. p.

    stochastic (the paper): sign(p - u), u ~ U(0, 1) from torch's generator, i.e. 2b - 1 for the
    Bernoulli code b = (sign(p - u) + 1) / 2; deterministic (the reference code): sign(p - 0.5).
    The sign is the reference code's ``torch.sign`` (``zero=0.0``: p exactly at the threshold
    gives 0), with the upstream gradient passed unchanged to p.
    """
    threshold = torch.rand_like(p) if stochastic else torch.full_like(p, 0.5)
    return sign_ste(p - threshold, zero=0.0)
