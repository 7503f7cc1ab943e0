"""CIBHash's torch pieces: the hash head and the training codes with a straight-through sign.

The loss terms are the shared ``nt_xent`` and ``bernoulli_kl`` of :mod:`hashbench.losses`.

Shapes: features f float (B, F); probabilities p = sigmoid(head(f)) float (B, bits); training
codes z float (B, bits) in {-1, +1}; test codes bool (B, bits).
"""

from __future__ import annotations

import torch
from torch import nn


def build_head(feature_dim: int, bits: int, hidden: int = 1024) -> nn.Module:
    """Linear(F, 1024) -> ReLU -> Linear(1024, bits): the logits whose sigmoid is p (reference code)."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


class _SignST(torch.autograd.Function):
    """sign(x) forward, identity backward (the reference code's ``hash`` Function)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def sign_st(x: torch.Tensor) -> torch.Tensor:
    return _SignST.apply(x)


def train_codes(p: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Training codes in {-1, +1} with straight-through gradient w.r.t. p.

    stochastic (the paper): sign(p - u), u ~ U(0, 1) from torch's generator, i.e. 2b - 1 for the
    Bernoulli code b = (sign(p - u) + 1) / 2; deterministic (the reference code): sign(p - 0.5).
    """
    threshold = torch.rand_like(p) if stochastic else torch.full_like(p, 0.5)
    return sign_st(p - threshold)
