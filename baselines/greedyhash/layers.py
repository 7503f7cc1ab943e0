"""GreedyHash's torch pieces: the sign layer with an identity backward, the cubic penalty, and
the similarity-preservation loss (shared with BiHalf, whose authors train with the same loss).

Imported lazily (this module imports torch; the plugin module must not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashbench.deep import full_precision

#: what ``pairs`` may be in :func:`similarity_preservation`
PAIRS = ("cross", "halves")


class SignSTE(torch.autograd.Function):
    """Forward ``b = +1 where h >= 0 else -1``; backward: the upstream gradient unchanged.

    GreedyHash's hash layer (Su et al., NeurIPS 2018; ``hash`` in the authors' code). The
    authors' forward is ``torch.sign``, which maps an exact 0 to 0; here 0 maps to +1, the
    convention of every hashbench code (True = bit 1 = value >= 0). The two differ only on
    inputs exactly equal to 0.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad_output


def sign_ste(h: torch.Tensor) -> torch.Tensor:
    """:class:`SignSTE` applied to ``h`` (any shape)."""
    return SignSTE.apply(h)


def cubic_penalty(h: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """``mean(| |h| - 1 |^power)``: pulls the relaxed codes toward +-1 (authors' ``loss2``).

    Computed in at least float32 (under autocast ``h`` may be half precision; float64 stays)."""
    return (full_precision(h).abs() - 1.0).abs().pow(power).mean()


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, B') cosine similarities between the rows of ``a`` (B, D) and of ``b`` (B', D)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def similarity_preservation(f1: torch.Tensor, f2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
                            pairs: str = "cross") -> torch.Tensor:
    """MSE between code cosine similarities and (detached) feature cosine similarities.

    f1, f2: features (B, F) of two views of one batch; b1, b2: their codes (B, bits).

    * ``"cross"``: every cross-view pair, ``mean_ij (cos(b1_i, b2_j) - cos(f1_i, f2_j))^2``
      over the B x B pairs (the diagonal holds the two views of one image);
    * ``"halves"``: the authors' pairing (GreedyHash ``unsupervised_vgg.py``, BiHalf
      ``Cifar10_I.py``, kamwoh/sdc ``UnsupGHLoss``): within one view, item i of the first half
      of the batch against item i of the second half, ``mean_i (cos(b_i, b_{i+n}) -
      cos(f_i, f_{i+n}))^2`` with n = B // 2 (an odd batch drops its last item, as in sdc);
      the mean of this loss over the two views. A batch of one item gives 0.

    The feature similarities are the target: detached (as in sdc; the authors' backbone is
    frozen, so there it makes no difference).
    """
    if pairs == "cross":
        return F.mse_loss(cosine_matrix(b1, b2), cosine_matrix(f1, f2).detach())
    if pairs == "halves":
        n = b1.shape[0] // 2
        if n == 0:
            return (b1.sum() + b2.sum()) * 0.0
        terms = []
        for f, b in ((f1, b1), (f2, b2)):
            target = F.cosine_similarity(f[:n], f[n:2 * n]).detach()
            terms.append(F.mse_loss(F.cosine_similarity(b[:n], b[n:2 * n]), target))
        return (terms[0] + terms[1]) / 2
    raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
