"""Loss terms in PyTorch-Metric-Learning style, and the rule that combines them.

**A method's objective is a weighted sum of named terms.** Every loss component returns a dict
``{term name: scalar tensor}``; the method's config gives one weight per term and
:func:`weighted_sum` adds them up (a weight of 0 drops the term) and returns what to log.
CIBHash, for example, is ``weighted_sum({**nt_xent(h1, h2), **bernoulli_kl(p1, p2)},
{"nt_xent": 1.0, "bernoulli_kl": 0.001})``.

=============== ====================================================== ======================
name            inputs                                                 returns
=============== ====================================================== ======================
nt_xent         z1, z2 (B, d): two views, row b of each a positive     {"nt_xent": ...}
bernoulli_kl    p1, p2 (B, bits): bit probabilities of the two views   {"bernoulli_kl": ...}
quantization    h (B, bits): relaxed codes                             {"quantization": ...}
bit_balance     h (B, bits): relaxed codes in [-1, 1]                  {"bit_balance": ...}
=============== ====================================================== ======================

``hashbench.create("loss", name, **params)`` returns a callable component (``loss(...)`` or
``loss.forward(...)``). The terms hold no parameters or buffers, so they are plain callables
rather than ``torch.nn.Module`` subclasses: that keeps torch out of this module's import, which
the registry performs at the start of every command. A method's ``nn.Module`` can hold them as
ordinary attributes; there is nothing to move between devices or to save.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import hookimpl
from .components import Component
from .errors import HashbenchError
from .params import param

if TYPE_CHECKING:  # pragma: no cover
    import torch


def weighted_sum(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective ``sum(weights[k] * terms[k])`` and the terms to log.

    Contract: every term needs a weight (a missing or unknown name is a one-line
    :class:`HashbenchError`, so a typo in a config cannot silently drop a term); a weight of 0
    drops the term: it adds nothing to the total (not even a NaN) and is not logged, so a
    method may skip computing it. Negative weights are allowed (e.g. WCH's -MSE(h, 0)).

    Returns ``(total, logged)``: ``total`` a scalar tensor to backpropagate; ``logged`` the kept
    terms, unweighted, detached, plus ``"total"``; they stay tensors (no device sync per step):
    sum them over an epoch and call ``.item()`` once.
    """
    import torch

    unknown = [k for k in weights if k not in terms]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(terms), n=1, cutoff=0.5)
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise HashbenchError(
            f"loss weight '{unknown[0]}' names no term.{hint} (terms: {', '.join(terms) or 'none'})"
        )
    missing = [k for k in terms if k not in weights]
    if missing:
        raise HashbenchError(f"loss term '{missing[0]}' has no weight (weights: {', '.join(weights) or 'none'})")
    if not terms:
        raise HashbenchError("weighted_sum needs at least one loss term")
    total = None
    logged: dict[str, torch.Tensor] = {}
    for name, value in terms.items():
        weight = weights[name]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise HashbenchError(f"loss weight '{name}' must be a finite number, got {weight!r}")
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise HashbenchError(f"loss term '{name}' must be a scalar tensor, got {shape}")
        if weight == 0:
            continue
        value = value.reshape(())
        total = weight * value if total is None else total + weight * value
        logged[name] = value.detach()
    if total is None:  # every weight is 0
        first = next(iter(terms.values()))
        total = first.new_zeros(())
    logged["total"] = total.detach()
    return total, logged


class Loss(Component):
    """Base class: a callable returning ``{name: scalar tensor}``; subclasses define ``forward``."""

    kind: ClassVar[str] = "loss"

    @property
    def owner(self) -> str:
        return f"loss {self.name}"

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _check_2d(self, **tensors: Any) -> None:
        import torch

        shapes = set()
        for arg, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise HashbenchError(f"{self.owner}: {arg} must be a 2-D float tensor (batch, dim), got {got}")
            shapes.add(tuple(t.shape))
        if len(shapes) > 1:
            raise HashbenchError(
                f"{self.owner}: inputs differ in shape: "
                + ", ".join(f"{a} {tuple(t.shape)}" for a, t in tensors.items())
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self.config).items())
        return f"{type(self).__name__}({fields})"


class NTXentLoss(Loss):
    """NT-Xent (SimCLR; as in CIBHash's code) over the 2B rows of two views z1, z2 (B, d).

    z = [z1; z2] (2B, d), cosine similarity s_ab = <z_a, z_b> / (|z_a| |z_b|). For each of the
    2B anchors a, its positive is the other view of the same item (a +- B) and its negatives the
    other 2(B - 1) rows: ``-log(exp(s_ap / t) / sum_{b != a} exp(s_ab / t))``, averaged over the
    2B anchors. Temperature t defaults to CIBHash's 0.3.
    """

    name = "nt_xent"
    summary = "NT-Xent / SimCLR contrastive loss over two views, cosine similarity (CIBHash: t=0.3)"

    @dataclass(frozen=True)
    class Config:
        temperature: float = param(0.3, gt=0, doc="softmax temperature of the cosine logits")
        eps: float = param(1e-8, gt=0, doc="norms are clamped to at least eps before dividing (as torch's cosine)")

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        self._check_2d(z1=z1, z2=z2)
        b = z1.shape[0]
        if b < 2:
            raise HashbenchError(f"{self.owner}: needs a batch of at least 2 items (negatives), got {b}")
        z = F.normalize(torch.cat([z1, z2], dim=0), dim=1, eps=self.config.eps)
        logits = (z @ z.T) / self.config.temperature
        logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
        targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
        return {"nt_xent": F.cross_entropy(logits, targets)}


class BernoulliKLLoss(Loss):
    """CIBHash's symmetric KL between the bit distributions of two views, with stop-gradient.

    ``1/2 [KL(Bern(p1) || sg Bern(p2)) + KL(Bern(p2) || sg Bern(p1))]``, summed over bits and
    averaged over the batch; sg = ``detach``: each view is pulled toward the other, never the
    target toward the source. ``KL(Bern(p) || Bern(q)) = p log(p/q) + (1-p) log((1-p)/(1-q))``,
    with ``eps`` added inside every log as in the CIBHash code (finite at p or q = 0 or 1 and,
    unlike a clamp, still differentiable there). Inputs are probabilities in [0, 1] (sigmoid
    outputs), not logits.
    """

    name = "bernoulli_kl"
    summary = "CIBHash symmetric KL between two views' Bernoulli bits, stop-gradient targets"

    @dataclass(frozen=True)
    class Config:
        eps: float = param(1e-8, gt=0, doc="added inside the logarithms")

    def _kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        import torch

        eps = self.config.eps
        kl = p * (torch.log(p + eps) - torch.log(q + eps)) + (1 - p) * (
            torch.log(1 - p + eps) - torch.log(1 - q + eps)
        )
        return kl.sum(dim=1).mean()

    def forward(self, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_2d(p1=p1, p2=p2)
        value = 0.5 * (self._kl(p1, p2.detach()) + self._kl(p2, p1.detach()))
        return {"bernoulli_kl": value}


class QuantizationLoss(Loss):
    """Quantization error ``mean((h - sign(h))^2)`` over batch and bits (sdc's MSE(h, sign h)).

    sign(h) is a constant target (its gradient is 0); sign(0) = 0.
    """

    name = "quantization"
    summary = "Quantization error: mean squared distance of relaxed codes to their signs"

    @dataclass(frozen=True)
    class Config:
        pass

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_2d(h=h)
        return {"quantization": (h - h.detach().sign()).square().mean()}


class BitBalanceLoss(Loss):
    """Bit balance: ``mean_k (mean_b h[b, k])^2`` for codes in [-1, 1].

    0 when every bit is +1 for half of the batch and -1 for the other half (on average).
    """

    name = "bit_balance"
    summary = "Bit balance: mean over bits of the squared batch mean of each bit (codes in [-1, 1])"

    @dataclass(frozen=True)
    class Config:
        pass

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_2d(h=h)
        return {"bit_balance": h.mean(dim=0).square().mean()}


LOSSES = (NTXentLoss, BernoulliKLLoss, QuantizationLoss, BitBalanceLoss)


@hookimpl
def register_losses():
    return list(LOSSES)
