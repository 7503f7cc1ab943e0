"""BiHalf (Li & van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy",
AAAI 2021; code: github.com/liyunqianggyn/Deep-Unsupervised-Image-Hashing, ``ImageHashing/``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashbench import hookimpl
from hashbench.deep import DeepHashMethod, TrainConfig
from hashbench.params import param
from hashbench.space import log_uniform

PAIRS = ("cross", "halves")  # kept equal to hashbench.layers.PAIRS (that module imports torch)


class BiHalf(DeepHashMethod):
    """A linear hash layer on backbone features followed by the parameter-free Bi-half layer, which
    gives every bit exactly half +1 and half -1 over a training batch (maximal bit entropy).

    Head: ``h = Linear(F, bits)(f)`` (the authors' ``fc_encode``, kamwoh/sdc's ``hash_fc``).
    Codes in training: ``b = BiHalf(h)`` per view (each view's batch is split on its own; see
    :class:`layers.BiHalfFunction` for the forward, odd batches, and the backward
    ``grad + gamma * (h - b) / (N * bits)``). Objective, one named term:

    * ``similarity``: ``MSE(cos(b_i, b_j), cos(f_i, f_j))``, the unsupervised loss the authors
      train with (the one of unsupervised GreedyHash; implemented in
      :func:`hashbench.layers.similarity_preservation`). There is no
      separate quantization term: ``gamma`` in the backward plays that part.

    Test codes: ``h >= 0``: the authors encode the query and database with ``sign(H)``
    (``cal_map_single.compress``), not with the batch-dependent half split, which is for training.

    Config (besides :class:`TrainConfig`'s):

    * ``gamma`` = 6.0 [code]: scale of the ``(h - b) / (N * bits)`` term of the backward;
    * ``pairs`` = ``"cross"`` [adapted]: as in GreedyHash; ``"halves"`` is the authors' pairing
      (first against second half of a batch of one view), the default compares every cross-view
      pair of the two augmented views hashbench's loop provides.

    Training defaults are :class:`TrainConfig`'s (Adam lr 1e-3, cosine schedule, batch 64,
    10 epochs, frozen ``tf_efficientnet_lite0`` at 64 px with the view bank) [adapted: a linear
    head on frozen features trains in seconds on a CPU]. The authors use SGD (momentum 0.9,
    weight decay 5e-4) at lr 1e-4 (x0.1 at epoch 120), batch 32, 300 epochs, frozen VGG-16 fc7.
    The batch size matters more here than elsewhere: the half split is over the batch.
    """

    name = "bihalf"
    summary = "BiHalf: Bi-half layer, half +1 / half -1 per bit over the batch (Li & van Gemert, AAAI 2021)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        gamma: float = param(6.0, ge=0, tune=log_uniform(0.5, 50.0),
                             doc="scale of the (h - b) / (N * bits) term of the backward (pulls h toward its code)")
        pairs: str = param("cross", choices=PAIRS, doc="which pairs of the two views the similarity term compares")

    def build_head(self, feature_dim: int) -> Any:
        import torch.nn as nn

        return nn.Linear(int(feature_dim), self.bits)

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        """``similarity`` between the Bi-half codes of the two views (see the class docstring)."""
        from hashbench.layers import similarity_preservation

        from .layers import bi_half

        b1 = bi_half(head(f1), self.config.gamma)
        b2 = bi_half(head(f2), self.config.gamma)
        return {"similarity": similarity_preservation(f1, f2, b1, b2, self.config.pairs)}

    def term_weights(self) -> dict[str, float]:
        return {"similarity": 1.0}

    def hash_codes(self, head: Any, f: Any) -> Any:
        """bool (B, bits): ``head(f) >= 0`` (not the batch-dependent half split)."""
        import torch

        with torch.no_grad():
            return head(f) >= 0


@hookimpl
def register_methods():
    return [BiHalf]
