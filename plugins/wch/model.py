"""WCH's torch pieces: the mutual attention, the weighted targets, the loss terms and the head.

Shapes (n the batch, p the patch tokens per image, d their channels, bits the code length):
tokens x1, x2 float (n, p, d) of two augmented views of the same n images; refined tokens the
same; weighted targets W float (n, n); codes h1, h2 float (n, bits), +-1 in value (the shared
straight-through sign of :mod:`hashbench.layers`). Every function keeps its inputs' dtype
(float32, or float64 for exact checks).
Everything follows the released code (RosieYuu/WCH, ``TransformerModel/modeling.py``
``cross_attention``, ``weighted``, ``hash_head``; ``train.py`` ``CL``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.layers import sign_ste

from .options import TARGET_NORMALIZATIONS

#: bytes of one float32 similarity
_FLOAT32 = 4


def mutual_attention(x1: torch.Tensor, x2: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's tokens re-weighted by their similarity to the other view's (WCH Eq. 1-2).

    ``S[n, i, j] = cos(x1[n, i], x2[n, j])`` (n, p, p);
    ``x1r[n, j] = sum_i softmax_i(S[n, i, j] / T) x1[n, i]`` (= ``softmax(S^T / T, -1) @ x1``);
    ``x2r[n, i] = sum_j softmax_j(S[n, i, j] / T) x2[n, j]`` (= ``softmax(S / T, -1) @ x2``).
    x1, x2: float (n, p, d) -> (x1r, x2r), float (n, p, d); differentiable in both inputs.
    """
    s = torch.einsum("nid,njd->nij", F.normalize(x1, dim=-1), F.normalize(x2, dim=-1))
    a1 = torch.softmax(s.transpose(1, 2) / temperature, dim=-1)  # a1[n, j, i] = softmax_i
    a2 = torch.softmax(s / temperature, dim=-1)  # a2[n, i, j] = softmax_j
    return torch.bmm(a1, x1), torch.bmm(a2, x2)


def chunk_rows(m: int, p: int, q: int, chunk_mib: float) -> int:
    """Rows n per chunk of G (rows, m, p, q) so that a chunk is at most ``chunk_mib`` MiB of
    float32: ``max(1, floor(chunk_mib * 2**20 / (4 m p q)))`` (q = p for WCH's two views)."""
    return max(1, math.floor(chunk_mib * 2**20 / (_FLOAT32 * m * p * q)))


def best_match_similarity(x1: torch.Tensor, x2: torch.Tensor, chunk_mib: float = 64.0) -> torch.Tensor:
    """``w[n, m] = mean_i max_j cos(x1[n, i], x2[m, j])`` (n, m) for x1 (n, p, d), x2 (m, q, d).

    ``G[n, m, i, j]`` (n, m, p, q) is never built whole: rows of n go in chunks of
    :func:`chunk_rows` (each chunk's G at most ``chunk_mib`` MiB of float32). The maximum is
    ``max(-1).values``, whose backward keeps only the argmax indices (``amax`` would keep every
    chunk's G for the backward pass), so autograd over the chunks stays within the memory bound.
    """
    n1, n2 = F.normalize(x1, dim=-1), F.normalize(x2, dim=-1)
    rows = chunk_rows(x2.shape[0], x1.shape[1], x2.shape[1], chunk_mib)
    parts = [
        torch.einsum("nid,mjd->nmij", n1[start:start + rows], n2).max(dim=-1).values.mean(dim=-1)
        for start in range(0, x1.shape[0], rows)
    ]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def weighted_targets(x1: torch.Tensor, x2: torch.Tensor, temperature: float = 0.2,
                     chunk_mib: float = 64.0, normalization: str = "column") -> torch.Tensor:
    """WCH's weighted similarity targets W float (n, n) of refined tokens x1, x2 (n, p, d).

    ``A = softmax_m(w / T)`` (each row sums to 1) with w of :func:`best_match_similarity`,
    then divided by its diagonal:

    * ``"column"`` (the released ``weighted()``: ``sim / scale`` with ``scale`` the VECTOR of
      diagonal entries, broadcast over the last axis): ``W[n, m] = A[n, m] / A[m, m]``, every
      column over that column's diagonal entry;
    * ``"row"``: ``W[n, m] = A[n, m] / A[n, n]``, every row over its own diagonal entry.

    Either way the diagonal is exactly 1, W is not renormalized and not detached (gradients
    reach x1 and x2, as in the released code). The normalization reads only the (n, n) A, so
    the chunking of w is the same for both.
    """
    if normalization not in TARGET_NORMALIZATIONS:
        raise ValueError(
            f"weighted_targets: normalization must be one of {TARGET_NORMALIZATIONS}, got {normalization!r}"
        )
    a = torch.softmax(best_match_similarity(x1, x2, chunk_mib) / temperature, dim=1)
    diagonal = a.diagonal()
    return a / diagonal if normalization == "column" else a / diagonal.unsqueeze(1)


def wch_loss_terms(h1: torch.Tensor, h2: torch.Tensor, W: torch.Tensor,
                   code_temperature: float = 0.3) -> dict[str, torch.Tensor]:
    """The three terms of the released ``CL`` loss, unweighted (scalars).

    h1, h2: float (n, bits) codes of the two views; W: float (n, n) soft targets.
    ``weighted_ce``: cross-entropy of ``logits = h1 h2^T / bits / code_temperature`` with W as
    soft targets, ``mean_n -sum_m W[n, m] log_softmax(logits)[n, m]``; ``balance``:
    ``mean_bits (mean_n h1)^2``; ``magnitude``: ``mean h1^2`` (entering the loss with weight -1).
    """
    logits = h1 @ h2.T / h1.shape[-1] / code_temperature
    return {
        "weighted_ce": F.cross_entropy(logits, W),
        "balance": h1.mean(dim=0).square().mean(),
        "magnitude": h1.square().mean(),
    }


class WCHHead(nn.Module):
    """The hash head on tokens (B, p, d): mean over p -> LayerNorm(d, eps 1e-6) ->
    Linear(d, hidden) -> ReLU -> Linear(hidden, bits) -> tanh = y (B, bits) in (-1, 1).

    ``relaxed(tokens)`` is y; ``forward(tokens)`` the training codes: the released
    ``y + (sign(y) - y).detach()``, computed as the shared straight-through sign
    ``sign_ste(y, zero=0.0)`` (:mod:`hashbench.layers`), equal to it bit for bit for the tanh
    outputs |y| <= 1 (+-1 in value, the gradient of y). Both Linear layers are initialized as
    the released code: weights ``kaiming_uniform_(mode="fan_out")``, biases ``normal_`` (std 1).
    """

    def __init__(self, token_dim: int, bits: int, hidden: int = 1024) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(int(token_dim), eps=1e-6)
        self.fc = nn.Linear(int(token_dim), int(hidden))
        self.code = nn.Linear(int(hidden), int(bits))
        for layer in (self.fc, self.code):
            nn.init.kaiming_uniform_(layer.weight, mode="fan_out")
            nn.init.normal_(layer.bias)

    def relaxed(self, tokens: torch.Tensor) -> torch.Tensor:
        """y = tanh(...) float (B, bits) of tokens (B, p, d)."""
        return torch.tanh(self.code(F.relu(self.fc(self.norm(tokens.mean(dim=1))))))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Straight-through codes float (B, bits): sign(y) in value, y's gradient."""
        return sign_ste(self.relaxed(tokens), zero=0.0)
