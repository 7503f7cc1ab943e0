"""Shared torch parts that deep methods compose: the straight-through sign and the
similarity-preservation loss.

* :func:`sign_ste` (:class:`SignSTE`): codes in {-1, +1} in the forward pass, the upstream
  gradient unchanged in the backward pass (GreedyHash's hash layer, CIBHash's training codes,
  WCH's head);
* :func:`cosine_matrix` and :func:`similarity_preservation` (``pairs`` one of :data:`PAIRS`):
  the unsupervised GreedyHash loss, which BiHalf trains with too: code cosine similarities
  regressed onto (detached) feature cosine similarities.

This module imports torch: a plugin module (imported at every command) imports it inside the
methods that train, never at module level. Every function keeps its inputs' dtype (float32, or
float64 for exact checks) and device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: what ``pairs`` may be in :func:`similarity_preservation`
PAIRS = ("cross", "halves")

#: what ``zero`` may be in :func:`sign_ste`
SIGN_AT_ZERO = (1.0, 0.0)


class SignSTE(torch.autograd.Function):
    """Forward: the sign of ``x``, with ``zero`` where ``x`` is exactly 0 (also -0.0); backward:
    the upstream gradient unchanged (the straight-through estimator). No gradient for ``zero``.

    ``zero = 1.0``: ``+1 where x >= 0 else -1`` (``torch.where``), the convention of every
    hashbench code (True = bit 1 = value >= 0). ``zero = 0.0``: ``torch.sign(x)`` (0 stays 0),
    the authors' ``hash`` Function of GreedyHash and CIBHash. The two differ only on inputs
    exactly equal to 0. NaN maps to -1 (``zero = 1.0``) or NaN (``zero = 0.0``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, zero: float = 1.0) -> torch.Tensor:  # noqa: D102
        if zero == 1.0:
            return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        if zero == 0.0:
            return torch.sign(x)
        raise ValueError(f"sign_ste: zero must be one of {SIGN_AT_ZERO}, got {zero!r}")

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad_output, None


def sign_ste(x: torch.Tensor, zero: float = 1.0) -> torch.Tensor:
    """:class:`SignSTE` applied to ``x`` (any shape, any floating dtype): same shape and dtype.

    For ``|x| <= 1`` (e.g. a tanh output) ``sign_ste(x, zero=0.0)`` equals the detach form
    ``x + (torch.sign(x) - x).detach()`` bit for bit in float16, bfloat16, float32 and float64
    (round to nearest: ``x + fl(1 - x)`` rounds to 1), with the same gradient.

    Where no gradient is needed (``torch.no_grad``, or ``x`` does not require one) the forward
    values are computed with plain torch ops, the same values: a module that uses it at test
    time can then be traced to TorchScript (``hashbench export``), which cannot hold a Python
    autograd Function.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return SignSTE.forward(None, x, zero)
    return SignSTE.apply(x, zero)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, B') cosine similarities between the rows of ``a`` (B, D) and of ``b`` (B', D)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def similarity_preservation(f1: torch.Tensor, f2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
                            pairs: str = "cross") -> torch.Tensor:
    """MSE between code cosine similarities and (detached) feature cosine similarities: a scalar.

    f1, f2: features (B, F) of two views of one batch; b1, b2: their codes (B, bits).

    * ``"cross"``: every cross-view pair, ``mean_ij (cos(b1_i, b2_j) - cos(f1_i, f2_j))^2``
      over the B x B pairs (the diagonal holds the two views of one image);
    * ``"halves"``: the authors' pairing (GreedyHash ``unsupervised_vgg.py``, BiHalf
      ``Cifar10_I.py``, kamwoh/sdc ``UnsupGHLoss``): within one view, item i of the first half
      of the batch against item i of the second half, ``mean_i (cos(b_i, b_{i+n}) -
      cos(f_i, f_{i+n}))^2`` with n = B // 2 (an odd batch drops its last item, as in sdc);
      the mean of this loss over the two views. A batch of one item gives 0 (still connected
      to b1 and b2, so a backward pass gives them zero gradients).

    The feature similarities are the target: detached, so no gradient reaches f1 or f2 (as in
    sdc; the authors' backbone is frozen, so there it makes no difference). ValueError for a
    ``pairs`` not in :data:`PAIRS`.
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
