"""WCH: Weighted Contrastive Hashing (Yu et al., ACCV 2022, arXiv 2209.14099). The reference
for every detail is the authors' released code, RosieYuu/WCH (MIT): ``train.py`` (the loss
``CL`` and the training setup) and ``TransformerModel/modeling.py`` (``cross_attention``,
``weighted``, ``hash_head``, ``train_forward``, ``forward``).

Data flow (``backbone_output = "tokens"``: the loop hands the objective the patch tokens X1, X2,
float (n, p, d), of two augmented views of the same n images, class token dropped):

1. mutual attention (:func:`model.mutual_attention`, temperature ``attention_temperature``):
   ``S[n, i, j] = cos(X1[n, i], X2[n, j])``; ``X1' = softmax(S^T / T) X1``,
   ``X2' = softmax(S / T) X2`` (n, p, d);
2. weighted similarity targets over the batch (:func:`model.weighted_targets`, temperature
   ``target_temperature``): ``w[n, m] = mean_i max_j cos(X1'[n, i], X2'[m, j])``,
   ``A = softmax_m(w / T)``, ``W[n, m] = A[n, m] / A[m, m]``: the released ``A / diag(A)``
   broadcasts the vector of diagonal entries over the last axis, so every COLUMN is divided by
   that column's diagonal entry (``target_normalization="column"``; ``"row"`` divides each row
   by its own, ``A[n, m] / A[n, n]``); diagonal 1, not renormalized, not detached; the
   (n, n, p, p) similarities are computed in chunks of rows of at most ``chunk_mib`` MiB;
3. the hash head (:class:`model.WCHHead`) on the refined tokens: mean over p -> LayerNorm ->
   Linear(d, ``hidden_dim``) -> ReLU -> Linear(hidden, bits) -> tanh = y; training codes
   ``h = y + (sign(y) - y).detach()`` (straight-through);
4. loss (:func:`model.wch_loss_terms`): ``weighted_ce`` = cross-entropy of
   ``h1 h2^T / bits / code_temperature`` with W as soft targets, plus ``balance_weight`` *
   ``balance`` = MSE(mean_batch h1, 0), minus ``magnitude_weight`` * ``magnitude`` = MSE(h1, 0)
   (h1 is the straight-through code: the value of ``magnitude`` is 1, its gradient pushes |y|
   towards 1; kept as released).

Test codes: the RAW tokens (no mutual attention) through the head, ``y >= 0``.

Gradients: with a frozen backbone (the default) W depends only on frozen tokens, so it is a
constant target and only the head trains; with ``frozen=False`` the same loop fine-tunes the
backbone, and gradients reach it through the head, through W and through the mutual attention,
as in the released code.

Defaults, and where they come from:

* from the released code: the mutual attention temperature 1, the target temperature 0.2, the
  column normalization of the targets, the code temperature 0.3, the head (hidden 1024,
  LayerNorm eps 1e-6, Linear weights ``kaiming_uniform_(mode="fan_out")`` and biases
  ``normal_``), the loss weights 1, 1, -1. Its config's ``alpha = 0.1`` is never used and has
  no field here;
* the released training setup, NOT the defaults here: ViT-B/16 (ImageNet-21k) fully
  fine-tuned on its 196 patch tokens at 224 px, Adam lr 1e-5, cosine schedule, 50 epochs,
  batch 32, its own augmentations (RandomResizedCrop scale 0.2-1, ColorJitter p 0.8, grayscale,
  GaussianBlur, flip); it selects the best epoch by mAP on the query set itself, hashbench
  selects on the validation split instead;
* adapted to the default CPU protocol (as the other deep methods): :class:`TrainConfig`'s
  fields unchanged: the offline ImageNet tf_efficientnet_lite0 at 64 px, frozen, whose tokens
  are the 2 x 2 = 4 positions of its 1280-channel last feature map, with the view bank
  (``bank_views=8``, ``augment="light"``); Adam lr 1e-3, cosine schedule, batch 64, 10 epochs,
  validation every 5 with patience 3. ``frozen=False`` (and e.g. a ViT backbone) fine-tunes as
  the paper does, through the same loop;
* hashbench's: the attention, targets and loss run with autocast off in at least float32
  (float64 inputs stay float64; the head runs under the loop's autocast);
  ``target_normalization="row"`` (an ablation, never the default); ``chunk_mib`` = 64 bounds
  the memory of the targets (the released code builds the whole (n, n, p, p) tensor; the
  values are the same).

torch is imported inside methods only: the registry imports this module at every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashbench import hookimpl
from hashbench.deep import DeepHashMethod, TrainConfig
from hashbench.errors import HashbenchError
from hashbench.params import param
from hashbench.space import uniform

from .options import TARGET_NORMALIZATIONS

#: the names of the objective's terms
TERMS = ("weighted_ce", "balance", "magnitude")


class WCH(DeepHashMethod):
    """Weighted Contrastive Hashing (see the module docstring).

    Terms ``weighted_ce`` (weight 1), ``balance`` (weight ``balance_weight``) and ``magnitude``
    (weight ``-magnitude_weight``); test codes ``head(tokens) >= 0`` of the raw tokens.
    Config fields besides :class:`TrainConfig`'s:

    * ``attention_temperature`` = 1.0: T of the mutual attention between the two views;
    * ``target_temperature`` = 0.2: T of the softmax over the batch of the weighted targets;
    * ``target_normalization`` = "column": the softmaxed targets A divided by their diagonal as
      the released code does, ``A[n, m] / A[m, m]``, or ``"row"``, ``A[n, m] / A[n, n]``;
    * ``code_temperature`` = 0.3: the logits are ``h1 h2^T / bits / code_temperature``;
    * ``hidden_dim`` = 1024: the hash head's hidden layer;
    * ``balance_weight`` = 1.0, ``magnitude_weight`` = 1.0: the loss is
      ``weighted_ce + balance_weight * balance - magnitude_weight * magnitude`` (0 drops a term);
    * ``chunk_mib`` = 64.0: the most MiB of float32 similarities held per chunk of the targets.
    """

    name = "wch"
    summary = ("WCH: Weighted Contrastive Hashing, mutual attention between views and weighted "
               "similarity targets (Yu et al., ACCV 2022)")
    backbone_output = "tokens"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        attention_temperature: float = param(1.0, gt=0, doc="T of the mutual attention between the two views")
        target_temperature: float = param(0.2, gt=0, tune=uniform(0.05, 1.0),
                                          doc="T of the softmax over the batch of the weighted targets")
        target_normalization: str = param("column", choices=TARGET_NORMALIZATIONS,
                                          doc="A / diag(A) broadcast (column, the code's) or per row")
        code_temperature: float = param(0.3, gt=0, tune=uniform(0.05, 1.0),
                                        doc="the logits are h1 h2^T / bits / code_temperature")
        hidden_dim: int = param(1024, ge=1, doc="width of the hash head's hidden layer")
        balance_weight: float = param(1.0, ge=0, doc="weight of balance = MSE(mean_batch h1, 0)")
        magnitude_weight: float = param(1.0, ge=0, doc="weight of magnitude = MSE(h1, 0), subtracted from the loss")
        chunk_mib: float = param(64.0, gt=0, doc="the most MiB of float32 similarities held per chunk of the targets")

    # ---- pieces --------------------------------------------------------------------------
    def build_head(self, feature_dim: int) -> Any:
        """:class:`model.WCHHead` on tokens of ``feature_dim`` (the backbone's token_dim) channels."""
        from .model import WCHHead

        return WCHHead(feature_dim, self.bits, self.config.hidden_dim)

    def refine(self, f1: Any, f2: Any) -> tuple[Any, Any, Any]:
        """(X1', X2', W): the mutually attended tokens (n, p, d) and the weighted targets (n, n),
        with autocast off, in at least float32."""
        import torch

        from hashbench.deep import full_precision

        from .model import mutual_attention, weighted_targets

        cfg = self.config
        with torch.autocast(device_type=f1.device.type, enabled=False):
            x1, x2 = mutual_attention(full_precision(f1), full_precision(f2), cfg.attention_temperature)
            W = weighted_targets(x1, x2, cfg.target_temperature, cfg.chunk_mib, cfg.target_normalization)
        return x1, x2, W

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        """Terms ``weighted_ce``, ``balance`` and ``magnitude`` (unweighted; see
        :meth:`term_weights`) for tokens f1, f2 float (n, p, d) of two views.

        ``head(tokens) -> h`` (any callable): straight-through codes (B, bits) of the mean-pooled
        tokens. The attention, targets and loss run with autocast off in at least float32
        (float64 inputs stay float64); the head runs under the loop's autocast, once over both
        views' refined tokens.
        """
        import torch

        from hashbench.deep import full_precision

        from .model import wch_loss_terms

        if f1.dim() != 3 or f1.shape != f2.shape:
            raise HashbenchError(
                f"method wch: the objective needs tokens (n, p, d) of two views of one shape, got "
                f"{tuple(f1.shape)} and {tuple(f2.shape)}"
            )
        batch = f1.shape[0]
        x1, x2, W = self.refine(f1, f2)
        h = head(torch.cat([x1, x2]))
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = full_precision(h)
            return wch_loss_terms(h[:batch], h[batch:], W, self.config.code_temperature)

    def term_weights(self) -> dict[str, float]:
        return {"weighted_ce": 1.0, "balance": float(self.config.balance_weight),
                "magnitude": 0.0 - float(self.config.magnitude_weight)}

    def hash_codes(self, head: Any, f: Any) -> Any:
        """bool (B, bits): the head's codes of the RAW tokens f (B, p, d) (no attention) >= 0
        (the straight-through sign(y) >= 0 exactly where the tanh output y >= 0)."""
        import torch

        with torch.no_grad():
            return head(f) >= 0


@hookimpl
def register_methods() -> list[type]:
    return [WCH]
