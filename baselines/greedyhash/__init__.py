"""GreedyHash, unsupervised (Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash
Coding in CNN", NeurIPS 2018; code: github.com/ssppp/GreedyHash, ``unsupervised_vgg.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashbench import hookimpl
from hashbench.deep import DeepHashMethod, TrainConfig
from hashbench.params import param
from hashbench.space import log_uniform

PAIRS = ("cross", "halves")  # kept equal to hashbench.layers.PAIRS (that module imports torch)


class GreedyHash(DeepHashMethod):
    """A linear hash layer on backbone features, ``b = sign(h)`` with the gradient passed straight
    through (identity backward), trained to make code similarities copy feature similarities.

    Head: ``h = Linear(F, bits)(f)`` (as the authors' ``fc_encode`` and kamwoh/sdc's ``hash_fc``).
    Codes in training: ``b = sign(h)`` (0 -> +1) with an identity backward
    (:func:`hashbench.layers.sign_ste`). Objective, two named terms:

    * ``similarity``: ``MSE(cos(b_i, b_j), cos(f_i, f_j))`` over pairs of items (see ``pairs``):
      the unsupervised GreedyHash loss, which makes the codes preserve the cosine-similarity
      structure of the (frozen) features;
    * ``cubic_penalty``: ``mean(| |h| - 1 |^power)``, weighted by ``alpha`` (authors: 0.1, power 3).

    Test codes: ``h >= 0`` (the authors' ``sign(h)``).

    Config (besides :class:`TrainConfig`'s):

    * ``alpha`` = 0.1 [code]: weight of ``cubic_penalty``;
    * ``power`` = 3.0 [code]: exponent of the penalty;
    * ``pairs`` = ``"cross"`` [adapted]: which pairs ``similarity`` compares. The authors train on
      one un-augmented view and compare item i of the first half of each batch with item i of the
      second half (``"halves"``, kept as an option: applied to each view, averaged). hashbench's
      loop gives two augmented views, so the default compares every cross-view pair
      ``(b1_i, b2_j)`` with ``(f1_i, f2_j)``: B^2 pairs per batch instead of B/2, and the diagonal
      pairs (two views of one image) ask for augmentation-invariant codes.

    Training defaults are :class:`TrainConfig`'s (Adam lr 1e-3, cosine schedule, batch 64,
    10 epochs, frozen ``tf_efficientnet_lite0`` at 64 px with the view bank) [adapted: a linear
    head on frozen features trains in seconds on a CPU]. The authors use SGD (momentum 0.9,
    weight decay 5e-4) at lr 1e-4, batch 32, 60 epochs (300 for 16 bits) on frozen VGG-16 fc7.
    """

    name = "greedyhash"
    summary = "GreedyHash: sign layer with identity backward + cubic penalty (Su et al., NeurIPS 2018)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        alpha: float = param(0.1, ge=0, tune=log_uniform(1e-3, 1.0), doc="weight of cubic_penalty = mean(| |h| - 1 |^power)")
        power: float = param(3.0, gt=0, doc="exponent of cubic_penalty")
        pairs: str = param("cross", choices=PAIRS, doc="which pairs of the two views the similarity term compares")

    def build_head(self, feature_dim: int) -> Any:
        import torch.nn as nn

        return nn.Linear(int(feature_dim), self.bits)

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        """``similarity`` and ``cubic_penalty`` (unweighted; see :meth:`term_weights`)."""
        import torch

        from hashbench.layers import sign_ste, similarity_preservation

        from .layers import cubic_penalty

        h1, h2 = head(f1), head(f2)
        b1, b2 = sign_ste(h1), sign_ste(h2)
        return {
            "similarity": similarity_preservation(f1, f2, b1, b2, self.config.pairs),
            "cubic_penalty": cubic_penalty(torch.cat([h1, h2]), self.config.power),
        }

    def term_weights(self) -> dict[str, float]:
        return {"similarity": 1.0, "cubic_penalty": float(self.config.alpha)}

    def hash_codes(self, head: Any, f: Any) -> Any:
        """bool (B, bits): ``head(f) >= 0``."""
        import torch

        with torch.no_grad():
            return head(f) >= 0


@hookimpl
def register_methods():
    return [GreedyHash]
