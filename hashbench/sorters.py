"""Differentiable sorters: the ablation axis of NSH (exact, SoftSort, NeuralSort, torchsort).

``P = hashbench.create("sorter", name, **params)(scores)`` maps float scores (B, n) to a
row-stochastic P (B, n, n): row i is a (soft) one-hot of the item at rank i, ranks counted in
DESCENDING order, so ``P @ scores[..., None]`` approximates the scores sorted high to low and
``einsum("bij,jd->bid", P, z)`` is NSH's "soft gather" of latents in that order. Each sorter's
``parameter`` class attribute names the Config field that, going to 0, makes P tend to the exact
permutation matrix for distinct scores (tied scores share a row's mass between them; ``exact``
breaks ties by index).

- ``exact``: the one-hot of ``argsort(s, descending, stable)``; straight-through gradient of
  ``softsort`` (parameter ``temperature``, which shapes the gradient only).
- ``softsort``: ``P[i, j] = softmax_j(-|sort_desc(s)_i - s_j|^power / temperature)``.
- ``neuralsort``: ``P[i, j] = softmax_j(((n + 1 - 2i) s_j - sum_k |s_j - s_k|) / temperature)``.
- ``torchsort``: ``P[i, j] = softmax_j(-(sort(r)_i - r_j)^2 / temperature)``, r the soft
  descending ranks ``torchsort.soft_rank(-s)``; parameter ``regularization_strength`` (score
  units), ``temperature`` in squared rank units.

Units: ``softsort``'s and ``exact``'s temperature is in score units (to the ``power``: the
logits are |s_i - s_j|^power); ``neuralsort``'s in score units too (in row i, the logits of the
items at ranks k and k + 1 differ by (2 (k - i) + 1) times the gap between their scores);
``torchsort``'s as above. At every sorter's DEFAULT parameters, well-separated scores (gaps
much larger than 1) are sorted: ``P @ s`` is the descending sort within 5 % of the gap (tested).

Costs per batch row: all are O(n^2) time and memory (P itself is n x n); ``torchsort`` adds an
O(n log n) isotonic regression. NeuralSort is computed with the row sums of A_s directly, not
with the authors' ``A_s @ (1 1^T)`` matmul, which is O(n^3).

torch (and torchsort, an optional extra) is imported inside methods only: the registry imports
this module at the start of every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import hookimpl
from .components import Component
from .errors import HashbenchError
from .params import param

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the one line that says how to get the optional torchsort package
TORCHSORT_INSTALL = (
    "pip install --no-build-isolation --no-deps torchsort==0.1.10 "
    "(after torch; on a machine without a GPU, with no nvcc on PATH)"
)


class Sorter(Component):
    """Base class: validation of the parameter and of the scores; subclasses define ``_sort``."""

    kind: ClassVar[str] = "sorter"
    #: the Config field whose limit 0 gives the exact permutation
    parameter: ClassVar[str] = "temperature"

    @dataclass(frozen=True)
    class Config:
        temperature: float = param(1.0, gt=0, doc="softness in score units; -> 0 gives the exact permutation")

    @property
    def owner(self) -> str:
        return f"sorter {self.name}"

    def _check_scores(self, scores: Any) -> None:
        import torch

        if not isinstance(scores, torch.Tensor):
            raise HashbenchError(f"{self.owner}: scores must be a torch tensor (batch, n), got {type(scores).__name__}")
        if scores.dim() != 2:
            raise HashbenchError(
                f"{self.owner}: scores must be 2-D (batch, n), got shape {tuple(scores.shape)}; "
                "for one list use scores[None]"
            )
        if not scores.is_floating_point():
            raise HashbenchError(f"{self.owner}: scores must be a float tensor, got {scores.dtype}")

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores (B, n) -> P (B, n, n), rows summing to 1, P @ scores ~ scores sorted descending."""
        self._check_scores(scores)
        return self._sort(scores)

    forward = __call__

    def _sort(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self.config).items())
        return f"{type(self).__name__}({fields})"


def _softsort(scores: torch.Tensor, temperature: float, power: float) -> torch.Tensor:
    """SoftSort of Prillo & Eisenschlos (ICML 2020), descending, as in the authors' code."""
    sorted_desc = scores.sort(dim=-1, descending=True).values  # gradients flow through the values
    distance = (sorted_desc.unsqueeze(-1) - scores.unsqueeze(-2)).abs()  # (B, i, j)
    if power != 1.0:
        distance = distance.pow(power)
    return (distance / -temperature).softmax(dim=-1)


def _hard_permutation(scores: torch.Tensor) -> torch.Tensor:
    """One-hot P (B, n, n) of the descending argsort; ties in index order (stable sort)."""
    import torch

    order = torch.argsort(scores.detach(), dim=-1, descending=True, stable=True)
    hard = torch.zeros(*scores.shape, scores.shape[-1], dtype=scores.dtype, device=scores.device)
    return hard.scatter_(-1, order.unsqueeze(-1), 1.0)


class SoftSortSorter(Sorter):
    """SoftSort (Prillo & Eisenschlos, ICML 2020): P = softmax(-|sort(s) 1^T - 1 s^T|^p / tau).

    ``P[b, i, j] = softmax_j(-|sort_desc(s)_i - s_j|^power / temperature)``. As in the paper and
    the authors' code, ``sort(s)`` is a plain sort whose values are NOT detached: gradients reach
    the scores both through the sorted values (the sort is piecewise linear) and through the
    pairwise differences. ``power`` is the exponent of the semi-metric |x - y|^p (paper: p = 1).
    NSH uses it with temperature 1/bits on similarities in [0, 1].
    """

    name = "softsort"
    summary = "SoftSort: softmax of -|sorted - s|^p / tau (Prillo & Eisenschlos, ICML 2020)"

    @dataclass(frozen=True)
    class Config:
        temperature: float = param(1.0, gt=0, doc="softness in score units; -> 0 gives the exact permutation")
        power: float = param(1.0, gt=0, doc="the distance |s_i - sorted_j|^power of SoftSort")

    def _sort(self, scores: torch.Tensor) -> torch.Tensor:
        return _softsort(scores, self.config.temperature, self.config.power)


class ExactSorter(SoftSortSorter):
    """Hard permutation matrix; straight-through gradient of SoftSort.

    Forward: P is exactly the one-hot of ``torch.argsort(scores, descending=True, stable=True)``
    (ties keep index order). Backward: straight-through estimator
    ``P = hard + (soft - soft.detach())``, with ``soft`` the SoftSort relaxation at this
    ``temperature`` and ``power`` (the ``hard=True`` mode of the SoftSort authors' code). The
    forward value is the hard matrix bit for bit; the gradient is SoftSort's. The temperature
    only shapes the gradient.
    """

    name = "exact"
    summary = "Exact permutation (argsort), straight-through gradient of SoftSort"

    # Config (temperature, power) and checks are SoftSort's: here they shape the gradient only

    def _sort(self, scores: torch.Tensor) -> torch.Tensor:
        import torch

        hard = _hard_permutation(scores)
        if not (scores.requires_grad and torch.is_grad_enabled()):
            return hard  # nothing to differentiate: skip the SoftSort pass
        soft = _softsort(scores, self.config.temperature, self.config.power)
        return hard + (soft - soft.detach())


class NeuralSortSorter(Sorter):
    """NeuralSort (Grover et al., ICLR 2019): the unimodal relaxation P_max of the sort operator.

    ``P[b, i, :] = softmax(((n + 1 - 2i) s - A_s 1) / temperature)`` with i = 1..n and
    ``A_s[j, k] = |s_j - s_k|`` (row i = the i-th largest). ``A_s 1`` is computed as the row
    sums of A_s (O(n^2) per list); the authors' code multiplies A_s by a ones matrix (O(n^3)).
    ``temperature`` is in score units: the logits scale with n times the score range, but in row
    i those of the items at ranks i and i +- 1 differ by the gap between their scores (which
    SoftSort's temperature compares to the same gap); P tends to the exact permutation as temperature -> 0 for distinct scores.
    """

    name = "neuralsort"
    summary = "NeuralSort: unimodal row-stochastic relaxation (Grover et al., ICLR 2019)"

    @dataclass(frozen=True)
    class Config:
        temperature: float = param(1.0, gt=0, doc="softness in score units; -> 0 gives the exact permutation")

    def _sort(self, scores: torch.Tensor) -> torch.Tensor:
        import torch

        n = scores.shape[-1]
        spread = (scores.unsqueeze(-1) - scores.unsqueeze(-2)).abs().sum(dim=-1)  # (B, n): A_s 1
        scaling = n + 1 - 2 * torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)  # (n,)
        logits = scaling[:, None] * scores.unsqueeze(-2) - spread.unsqueeze(-2)  # (B, i, j)
        return (logits / self.config.temperature).softmax(dim=-1)


def _import_torchsort(owner: str):
    try:
        import torchsort
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "torchsort"
        cause = "is not installed" if missing else f"fails to import ({' '.join(str(exc).split())})"
        raise HashbenchError(f"{owner}: the optional package torchsort {cause}; install it: {TORCHSORT_INSTALL}") from None
    return torchsort


class TorchsortSorter(Sorter):
    """Fast differentiable ranks (Blondel et al., ICML 2020, via torchsort) made into a soft P.

    ``r = torchsort.soft_rank(-s, regularization, regularization_strength)`` are descending soft
    ranks in [1, n] (r_j ~ 1 for the largest score); they keep the order of the scores. P is
    SoftSort applied in rank space with a squared distance:
    ``P[b, i, j] = softmax_j(-(sort_asc(r)_i - r_j)^2 / temperature)``: the anchor of row i is
    the soft rank of the item at rank i, so each row's largest entry is always the right item.

    Parameters and their units:

    * ``regularization_strength`` (default 1.0), in SCORE units (torchsort's epsilon: for l2, the
      ranks are the projection of -s / strength onto the permutahedron): the softness. Below the
      smallest gap between scores the l2 soft ranks are exact integers; a larger strength pulls
      the ranks toward (n + 1) / 2 and spreads the rows; a huge one gives uniform rows. P tends
      to the exact permutation as the strength -> 0 (this sorter's ``parameter``).
    * ``temperature`` (default 0.05), in SQUARED RANK units: the width of the rank kernel. On
      exact integer ranks the weight of a neighbouring rank is exp(-1 / temperature) relative
      to the right one (2e-9 at 0.05), so well-separated scores are sorted at the defaults and
      the strength alone sets the softness. It once defaulted to the strength, a quantity in
      score units: on scores 100 apart that left e^-1 of each row's mass on each neighbouring
      rank (P @ s off by 29 % of the gap).
    * ``regularization``: "l2" (default) or "kl", torchsort's.

    (Anchoring rows at the integer positions i instead of sort(r)_i, the textbook alternative,
    makes rows confidently wrong when the ranks are compressed with a small kernel: row 1 and
    row 2 then both pick the top item.)

    torchsort is an optional extra (source-only): ``pip install --no-build-isolation --no-deps
    torchsort==0.1.10`` after torch. Without it, building or calling this sorter raises a
    one-line :class:`HashbenchError` with that command.
    """

    name = "torchsort"
    summary = "torchsort soft ranks (Blondel et al., ICML 2020), made a soft permutation in rank space"
    parameter = "regularization_strength"

    @dataclass(frozen=True)
    class Config:
        regularization_strength: float = param(1.0, gt=0, doc="softness in score units (torchsort's epsilon)")
        regularization: str = param("l2", choices=("l2", "kl"), doc="torchsort's regularization")
        temperature: float = param(0.05, gt=0, doc="width of the rank kernel, in squared rank units")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _import_torchsort(self.owner)

    def _sort(self, scores: torch.Tensor) -> torch.Tensor:
        torchsort = _import_torchsort(self.owner)
        try:
            ranks = torchsort.soft_rank(
                -scores,
                regularization=self.config.regularization,
                regularization_strength=self.config.regularization_strength,
            )
        except ImportError:  # torchsort's own message for a CPU-only build called on CUDA tensors
            raise HashbenchError(
                f"{self.owner}: the installed torchsort has no CUDA extension (it was built without nvcc); "
                "rebuild it where nvcc is on PATH: pip install --no-build-isolation --no-deps "
                "--force-reinstall --no-cache-dir torchsort==0.1.10"
            ) from None
        anchors = ranks.sort(dim=-1).values  # soft rank of the item at rank i; gradients flow
        distance = (anchors.unsqueeze(-1) - ranks.unsqueeze(-2)).square()  # (B, i, j)
        return (distance / -self.config.temperature).softmax(dim=-1)


SORTERS = (ExactSorter, SoftSortSorter, NeuralSortSorter, TorchsortSorter)


@hookimpl
def register_sorters():
    return list(SORTERS)
