"""CIBHash: Unsupervised Hashing with Contrastive Information Bottleneck (Qiu et al., IJCAI 2021,
arXiv 2105.06138; reference code github.com/zexuanqiu/CIBHash).

Defaults, and where they come from:

* from the reference code: the head Linear(F, 1024) -> ReLU -> Linear(1024, bits) -> sigmoid;
  NT-Xent temperature 0.3; KL weight (beta) 0.001; Adam, lr 1e-3, batch 64, constant lr; a
  frozen backbone (the code freezes VGG-16);
  deterministic training codes sign(p - 0.5) with a straight-through gradient
  (``stochastic=False``: the code's ``hash_layer(prob - 0.5)``);
* from the paper, as a config field for ablations, never the default: stochastic Bernoulli codes
  b = (sign(p - u) + 1) / 2, u ~ U(0, 1) (``stochastic=True``); either way NT-Xent sees the
  codes in {-1, +1} (2b - 1), as the code feeds sign(p - 0.5);
* adapted to the default CPU protocol: backbone VGG-16 fc7 at 224 px (4096-d) -> the offline
  ImageNet tf_efficientnet_lite0 at 64 px (1280-d), whose outputs of 8 augmented views per
  training image are banked (``bank_views=8``; VGG's dropout, active in the code's training,
  has no counterpart on a bank); epochs 60 (80 at 16 bits) -> 10 (the default's CPU budget), validation every 20 epochs
  with early stop after 6 bad ones -> every 5 epochs, patience 3; seed 8888 -> the run seed;
  the code's augmentations (recipe "cibhash": crops of 224 px photos, colour jitter, blur) ->
  the "light" recipe made for 28-32 px images (``augment="cibhash"`` restores them), which
  also shares one view bank with the other deep methods (the default's time budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashbench import create, hookimpl
from hashbench.deep import DeepHashMethod, TrainConfig
from hashbench.params import param
from hashbench.space import log_uniform, uniform


class CIBHash(DeepHashMethod):
    """Contrastive hashing with an information bottleneck (see the module docstring).

    p = sigmoid(head(f)) (B, bits); training codes: sign(p - 0.5) (the code's; ``stochastic``:
    sign(p - u), u ~ U(0, 1), the paper's) in {-1, +1}, straight-through; loss terms
    ``nt_xent`` (NT-Xent over the 2B codes, cosine, ``temperature``) and ``bernoulli_kl`` (symmetric Bernoulli KL between the views' p with
    stop-gradient, weight ``kl_weight``); test codes p >= 0.5.
    """

    name = "cibhash"
    summary = "CIBHash: contrastive information bottleneck hashing (Qiu et al., IJCAI 2021)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        schedule: str = "constant"
        temperature: float = param(0.3, gt=0, tune=uniform(0.05, 1.0), doc="NT-Xent temperature")
        kl_weight: float = param(0.001, ge=0, tune=log_uniform(1e-5, 1e-1),
                                 doc="weight (beta) of the symmetric Bernoulli KL term")
        stochastic: bool = param(False, doc="training codes sign(p - u), u ~ U(0, 1) (the paper) instead of sign(p - 0.5) (the code)")

    def build_head(self, feature_dim: int) -> Any:
        from .model import build_head

        return build_head(feature_dim, self.bits)

    def probabilities(self, head: Any, f: Any) -> Any:
        """p = sigmoid(head(f)): float (B, bits)."""
        import torch

        return torch.sigmoid(head(f))

    def losses(self) -> tuple[Any, Any]:
        """The shared loss components ``nt_xent`` (this temperature) and ``bernoulli_kl``."""
        if getattr(self, "_losses", None) is None:
            self._losses = (create("loss", "nt_xent", temperature=self.config.temperature),
                            create("loss", "bernoulli_kl"))
        return self._losses

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        """Terms ``nt_xent`` (of the training codes) and ``bernoulli_kl`` (of the probabilities)."""
        from .model import train_codes

        nt_xent, bernoulli_kl = self.losses()
        p1, p2 = self.probabilities(head, f1), self.probabilities(head, f2)
        z1 = train_codes(p1, self.config.stochastic)
        z2 = train_codes(p2, self.config.stochastic)
        return {**nt_xent(z1, z2), **bernoulli_kl(p1, p2)}

    def term_weights(self) -> dict[str, float]:
        return {"nt_xent": 1.0, "bernoulli_kl": self.config.kl_weight}

    def hash_codes(self, head: Any, f: Any) -> Any:
        return self.probabilities(head, f) >= 0.5


@hookimpl
def register_methods() -> list[type]:
    return [CIBHash]
