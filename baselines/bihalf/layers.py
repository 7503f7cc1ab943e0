"""The Bi-half layer (Li & van Gemert, AAAI 2021), in torch. Imported lazily (imports torch)."""

from __future__ import annotations

import torch


class BiHalfFunction(torch.autograd.Function):
    """Forward: per bit (column), the half of the batch with the largest values gets +1, the rest -1.

    ``u``: float (N, D). Each column is sorted in descending order (a stable sort: among equal
    values the lower row index ranks first) and the first ``N // 2`` rows of that order get +1,
    the other ``N - N // 2`` get -1, as in the authors' code (``int(N/2)`` ones). An even batch
    thus has exactly N/2 of each sign per column; an odd batch has one more -1 than +1 (a batch
    of one item is all -1).

    Backward, the authors' formula: ``grad_u = grad_b + gamma * (u - b) / (N * D)``, the
    straight-through gradient plus the gradient of ``gamma / (2 N D) * ||u - b||_F^2``, which
    pulls ``u`` toward its binary code. No gradient for ``gamma``.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: float) -> torch.Tensor:  # noqa: D102
        if u.dim() != 2:
            raise ValueError(f"bi-half layer: expected (N, D), got shape {tuple(u.shape)}")
        n, d = u.shape
        _, index = torch.sort(u, dim=0, descending=True, stable=True)
        half = n // 2
        ranked = torch.cat([u.new_ones(half, d), -u.new_ones(n - half, d)])
        b = torch.empty_like(u).scatter_(0, index, ranked)
        ctx.save_for_backward(u, b)
        ctx.gamma = float(gamma)
        return b

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: D102
        u, b = ctx.saved_tensors
        return grad_output + ctx.gamma * (u - b) / b.numel(), None


def bi_half(u: torch.Tensor, gamma: float = 6.0) -> torch.Tensor:
    """:class:`BiHalfFunction` applied to ``u`` (N, D)."""
    return BiHalfFunction.apply(u, gamma)
