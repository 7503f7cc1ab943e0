"""NSH's torch pieces: the head, the code similarity, the soft gather, the scores and SortedNCE.

Shapes (B the batch, bits the code length, d the latent size): relaxed codes b1, b2 float
(B, bits) in (-1, 1); latents z1, z2 float (B, d), unit rows; code similarity S (B, B);
soft permutations P (B, B, B), ``P[i, r, k]`` = weight of item k at rank r of anchor i's list
(rank 0 = most similar); scores c (B, B), ``c[i, r]`` for rank r of anchor i. Every function
keeps its inputs' dtype (float32, or float64 for exact checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NSHHead(nn.Module):
    """The two heads on the shared backbone features f (B, F).

    ``hash``: Linear(F, bits) -> tanh, the relaxed codes b (B, bits) in (-1, 1) (kamwoh/sdc's
    ``hash_encoder``); ``latent``: Linear(F, latent_dim), then L2-normalized rows (sdc's
    ``latent_encoder``). ``forward(f) -> (b, z)``.
    """

    def __init__(self, feature_dim: int, bits: int, latent_dim: int = 1024) -> None:
        super().__init__()
        self.hash = nn.Sequential(nn.Linear(int(feature_dim), int(bits)), nn.Tanh())
        self.latent = nn.Linear(int(feature_dim), int(latent_dim))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hash(f), F.normalize(self.latent(f), dim=-1)


def code_similarity(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """``S = b1 b2^T / (2 bits) + 0.5`` (B1, B2): 1 - Hamming / bits for codes in {-1, +1}."""
    return b1 @ b2.T / (2 * b1.shape[-1]) + 0.5


def soft_gather(P: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """NSH's soft gather ``E = einsum('irk,kd->ird', P, z)`` (B, n, d): row i of E holds the
    latents z in anchor i's (soft) order. O(B n^2 d): :func:`ranked_cosines` avoids building it."""
    return torch.einsum("irk,kd->ird", P, z)


def ranked_dots(P: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``c[i, r] = E[i, r] . z2[i]`` (B, n) with ``E = soft_gather(P, z1)``, without E.

    kamwoh/sdc's score (``cossim = einsum('ijd,id->ij', e, z2)``: a plain dot product with the
    UNnormalized E, whose norm shrinks when a row of P is spread): NSH's default
    (``score="dot"``). ``E[i, r] . z2[i] = sum_k P[i, r, k] (z2 z1^T)[i, k]``: O(B n^2 + n^2 d)
    instead of the gather's O(B n^2 d).
    """
    cross = z2 @ z1.T  # (B, n): z2[i] . z1[k]
    return torch.bmm(P, cross.unsqueeze(-1)).squeeze(-1)


def ranked_cosines(P: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``c[i, r] = cos(E[i, r], z2[i])`` (B, n) with ``E = soft_gather(P, z1)``, without E.

    NSH's ``score="cosine"`` variant (hashbench's, not the reference's: see :func:`ranked_dots`;
    equal to it for an exact permutation, where every E[i, r] is a unit latent). Every E[i, r]
    is a weighted sum of the rows of z1, so both the dot product and the norm are read off Gram
    matrices: ``E[i, r] . z2[i] = sum_k P[i, r, k] (z2 z1^T)[i, k]`` and
    ``|E[i, r]|^2 = P[i, r] (z1 z1^T) P[i, r]^T``. Cost O(B n^3) (B^4 = 16.8 M multiply-adds
    at B = 64) instead of the gather's O(B n^2 d) (268 M at d = 1024). The norms are clamped
    to ``eps`` (as ``torch.cosine_similarity``), so the value equals the direct computation
    (tested) up to float rounding.
    """
    dots = ranked_dots(P, z1, z2)  # (B, n)
    squared = row_quadratic_form(P, z1 @ z1.T)  # (B, n): |E[i, r]|^2
    norm_e = squared.clamp_min(eps * eps).sqrt()
    norm_z2 = z2.norm(dim=-1).clamp_min(eps)
    return dots / (norm_e * norm_z2.unsqueeze(1))


class _RowQuadraticForm(torch.autograd.Function):
    """``q[i, r] = P[i, r] G P[i, r]^T`` for a SYMMETRIC G, with a backward of one matmul.

    Autograd of ``((P @ G) * P).sum(-1)`` costs three (B n, n) x (n, n) products; with G
    symmetric, ``dq/dP[i, r] = 2 (P G)[i, r]`` is already there from the forward, so only
    ``dq/dG = sum_ir g_ir P[i, r]^T P[i, r]`` needs a product: two instead of three.
    """

    @staticmethod
    def forward(ctx, P: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, n, k = P.shape
        PG = (P.reshape(b * n, k) @ gram).reshape(b, n, k)
        ctx.save_for_backward(P, PG)
        return (PG * P).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        P, PG = ctx.saved_tensors
        b, n, k = P.shape
        grad_P = grad_gram = None
        if ctx.needs_input_grad[0]:
            grad_P = 2 * grad.unsqueeze(-1) * PG
        if ctx.needs_input_grad[1]:
            weighted = (P * grad.unsqueeze(-1)).reshape(b * n, k)
            grad_gram = weighted.T @ P.reshape(b * n, k)
        return grad_P, grad_gram


def row_quadratic_form(P: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``q[i, r] = sum_kl P[i, r, k] gram[k, l] P[i, r, l]`` (B, n) for P (B, n, k) and a
    symmetric gram (k, k) (e.g. ``z z^T``); differentiable in both (see _RowQuadraticForm)."""
    return _RowQuadraticForm.apply(P, gram)


def sorted_nce(logits: torch.Tensor, positives: int) -> torch.Tensor:
    """SortedNCE of scores ``logits`` (B, n) = score / tau, ranks in order (rank 0 first).

    The first ``positives`` = m ranks of each anchor's list are its positives, ranks m..n-1 its
    negatives; each positive is contrasted with all the negatives in ONE softmax:
    ``L = mean_i (1/m) sum_{k<m} -log(exp(c_ik) / (exp(c_ik) + sum_{r>=m} exp(c_ir)))``,
    computed as ``logaddexp(c_ik, logsumexp_{r>=m} c_ir) - c_ik`` (stable). The public
    re-implementations (kamwoh/sdc, DimpleCrq/NSH) apply a softmax to the logits and then
    ``F.cross_entropy``, which applies a second one: that double softmax is not reproduced.
    Needs 1 <= m <= n - 1 (at least one negative).
    """
    n = logits.shape[-1]
    if not 1 <= positives <= n - 1:
        raise ValueError(f"sorted_nce: positives must be in [1, {n - 1}] for lists of {n}, got {positives}")
    pos = logits[:, :positives]  # (B, m)
    neg = torch.logsumexp(logits[:, positives:], dim=-1, keepdim=True)  # (B, 1)
    return (torch.logaddexp(pos, neg) - pos).mean()
