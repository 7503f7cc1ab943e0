"""NSH: Naturally-Sorted Hashing (Yu et al., "Learning to Hash Naturally Sorts", IJCAI 2022,
arXiv 2201.13322). No official code is public; the reference for details is
kamwoh/sdc's re-implementation (the BMVC 2023 unified codebase).

Data flow (paper, Fig. 2): the shared encoder (hashbench's backbone) feeds two heads (see
:class:`loss.NSHHead`): relaxed codes b = tanh(Linear(F, bits)(f)) and latents
z = normalize(Linear(F, latent_dim)(f)). For the two views of a batch: code similarity
``S = b1 b2^T / (2 bits) + 0.5`` (B, B) (= 1 - Hamming / bits for +-1 codes); a sorter of the
``sorter`` registry turns each row of S into a soft permutation P (B, B, B), descending (rank
0 = most similar); the soft gather ``E = P z1`` (B, B, d) orders the view-1 latents by code
similarity to each anchor; the score ``c[i, r] = E[i, r] . z2[i] / temperature`` (sdc's plain
dot product with the unnormalized E; ``score="cosine"`` takes cos(E[i, r], z2[i])); SortedNCE
(:func:`loss.sorted_nce`: the first ``positives`` ranks are positives, the rest negatives, ONE
softmax: the public re-implementations' double softmax is a bug not copied) plus the
quantization error MSE(b, sign b). As in sdc, row i of S ranks items j by sim(b1_i, b2_j),
gathers the view-1 latents z1_j and compares them with z2_i.

The ranking loss reaches the hash head only through the sorter (P depends on S, S on the
codes): with ``sorter="exact"`` through SoftSort's straight-through gradient.

Defaults, and where they come from:

* from kamwoh/sdc (``configs/model/nsh.yaml``, ``models/loss/nsh.py``, ``models/arch/nsh.py``):
  the heads (Linear+tanh; Linear to ``latent_dim`` = 1024 + L2 norm); SoftSort with temperature
  1/bits (``sort_temperature=None``); ``positives`` m = 2 (also DimpleCrq/NSH); SortedNCE
  temperature 0.3 (sdc's config; its loss's default and DimpleCrq's is 0.1); quantization term
  MSE(b, sign b) over both views with weight 1 (sdc's ``quan: 1``; the paper's form is unknown);
  a frozen backbone; the score E[i, r] . z2[i] with E unnormalized (sdc names it ``cossim``,
  but it is a dot product: E is a P-weighted sum of unit latents, so its norm shrinks when a
  row of P is spread);
* not copied from sdc: its double softmax (a softmax of the logits fed to
  ``F.cross_entropy``, which applies another): SortedNCE here applies one;
* hashbench's, as config fields for ablations, never the default: ``score="cosine"``
  (cos(E[i, r], z2[i]), normalizing E; equal to the dot product for an exact permutation,
  where every E[i, r] is a unit latent, but not for a soft one);
* adapted to the default CPU protocol (as the other deep methods): backbone ResNet-50/VGG-16 ->
  the offline ImageNet tf_efficientnet_lite0 at 64 px (1280-d) with its view bank
  (``bank_views=8``, ``augment="light"``; sdc: MoCo-v2 augmentations, ``augment="mocov2"``);
  Adam lr 1e-5 (weight decay 1e-5), batch 50, 200 epochs -> :class:`TrainConfig`'s Adam lr
  1e-3, cosine schedule, batch 64, 10 epochs, validation every 5 with patience 3.

Batches smaller than ``positives + 1``: the loop's batches are all ``batch_size`` items except
when the training split itself is smaller (one batch of all N >= 2 items); the config requires
1 <= positives <= batch_size - 1, and at run time m is clamped to B - 1 for a batch of B
(at least one negative).

torch is imported inside methods only: the registry imports this module at every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashbench import create, hookimpl
from hashbench.deep import DeepHashMethod, TrainConfig
from hashbench.errors import HashbenchError
from hashbench.params import param
from hashbench.space import int_range, uniform

#: SortedNCE and quantization: the names of the objective's terms
TERMS = ("sorted_nce", "quantization")
#: the scores of rank r of anchor i: "dot" = E[i, r] . z2[i] (kamwoh/sdc), "cosine" = cos(E[i, r], z2[i])
SCORES = ("dot", "cosine")


class NSH(DeepHashMethod):
    """Naturally-Sorted Hashing (see the module docstring).

    Terms ``sorted_nce`` (weight 1) and ``quantization`` (weight ``quantization_weight``);
    test codes ``tanh(Linear(f)) >= 0``. Config fields besides :class:`TrainConfig`'s:

    * ``sorter`` = "softsort": any registered sorter (``hashbench list sorters``: exact,
      softsort, neuralsort, torchsort);
    * ``sort_temperature`` = None: the sorter's ``parameter`` (temperature, or torchsort's
      regularization_strength); None = 1 / bits (sdc's SoftSort temperature);
    * ``positives`` = 2: m, the ranks of each list taken as positives (1 <= m <= batch_size - 1);
    * ``score`` = "dot": the score of rank r of anchor i, ``E[i, r] . z2[i]`` (sdc's) or
      ``"cosine"``, ``cos(E[i, r], z2[i])``;
    * ``temperature`` = 0.3: tau of SortedNCE;
    * ``latent_dim`` = 1024: size of the latent head;
    * ``quantization_weight`` = 1.0: weight of MSE(b, sign b) (0 drops it).
    """

    name = "nsh"
    summary = "NSH: Naturally-Sorted Hashing, SortedNCE through a differentiable sorter (Yu et al., IJCAI 2022)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        sorter: str = param("softsort", registered="sorter", doc="the differentiable sorter of code similarities")
        sort_temperature: float | None = param(None, gt=0, doc="the sorter's parameter; None = 1 / bits (sdc)")
        positives: int = param(2, ge=1, tune=int_range(1, 8),
                               doc="m: the ranks of each sorted list taken as positives (<= batch_size - 1)")
        score: str = param("dot", choices=SCORES, doc="rank r of anchor i: E[i, r] . z2[i] (sdc) or cos(E[i, r], z2[i])")
        temperature: float = param(0.3, gt=0, tune=uniform(0.05, 1.0), doc="tau of SortedNCE")
        latent_dim: int = param(1024, ge=1, doc="size of the latent head")
        quantization_weight: float = param(1.0, ge=0, doc="weight of MSE(b, sign b); 0 drops it")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.positives > self.batch_size - 1:
                raise ValueError(f"positives must be <= batch_size - 1 = {self.batch_size - 1}, got {self.positives}")

    def __init__(self, bits: int, seed: int = 0, **params: Any) -> None:
        super().__init__(bits, seed, **params)
        # built now, so that a bad parameter or a missing torchsort fails before training
        self._sorter = create("sorter", self.config.sorter, **{self.sort_parameter: self.sort_temperature})
        self._quantization = create("loss", "quantization")

    # ---- pieces --------------------------------------------------------------------------
    @property
    def sort_parameter(self) -> str:
        """The name of the sorter's temperature-like field (its class's ``parameter``)."""
        from hashbench.registry import registry

        return registry("sorter").get(self.config.sorter).parameter

    @property
    def sort_temperature(self) -> float:
        """The value given to the sorter's parameter: ``sort_temperature``, else 1 / bits."""
        t = self.config.sort_temperature
        return 1.0 / self.bits if t is None else float(t)

    @property
    def sorter(self) -> Any:
        """The sorter: scores (B, n) -> P (B, n, n), rank 0 = the largest score."""
        return self._sorter

    def build_head(self, feature_dim: int) -> Any:
        from .loss import NSHHead

        return NSHHead(feature_dim, self.bits, self.config.latent_dim)

    def positives_for(self, batch: int) -> int:
        """m for a batch of ``batch`` items: ``positives`` clamped to ``batch - 1``."""
        return max(1, min(self.config.positives, batch - 1))

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        """Terms ``sorted_nce`` and ``quantization`` (unweighted; see :meth:`term_weights`).

        ``head(f) -> (b, z)``: relaxed codes (B, bits) and unit latents (B, latent_dim) (any
        callable). The similarity, sorter and losses run with autocast off in at least float32
        (a bfloat16 S would blur Hamming steps of 1/bits; float64 inputs stay float64); the
        heads run under the loop's autocast.
        """
        import torch

        from hashbench.deep import full_precision

        from .loss import code_similarity, ranked_cosines, ranked_dots, sorted_nce

        batch = f1.shape[0]
        b, z = head(torch.cat([f1, f2]))  # one pass over both views: the same rows, fewer calls
        b1, b2, z1, z2 = b[:batch], b[batch:], z[:batch], z[batch:]
        if batch < 2:
            raise HashbenchError(f"method nsh: a batch needs at least 2 items (a negative), got {batch}")
        with torch.autocast(device_type=b1.device.type, enabled=False):
            b1, b2, z1, z2 = (full_precision(t) for t in (b1, b2, z1, z2))
            P = self.sorter(code_similarity(b1, b2))  # (B, B, B)
            score = ranked_dots if self.config.score == "dot" else ranked_cosines
            logits = score(P, z1, z2) / self.config.temperature
            nce = sorted_nce(logits, self.positives_for(batch))
            quantization = self._quantization(torch.cat([b1, b2]))["quantization"]
        return {"sorted_nce": nce, "quantization": quantization}

    def term_weights(self) -> dict[str, float]:
        return {"sorted_nce": 1.0, "quantization": float(self.config.quantization_weight)}

    def hash_codes(self, head: Any, f: Any) -> Any:
        """bool (B, bits): the relaxed codes b of ``head(f) -> (b, z)`` >= 0."""
        import torch

        with torch.no_grad():
            return head(f)[0] >= 0


@hookimpl
def register_methods() -> list[type]:
    return [NSH]
