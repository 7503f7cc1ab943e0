"""The contract of deep hashing methods: a head and an objective; the training loop does the rest.

A deep method subclasses :class:`DeepHashMethod` and provides three pieces:

* ``build_head(feature_dim) -> torch.nn.Module``: the trainable part on top of the backbone
  (for a frozen backbone, the only trainable part);
* ``objective(head, f1, f2) -> dict[str, Tensor]``: named scalar loss terms for the backbone
  outputs of two augmented views of one batch (f1, f2: float (B, F) pooled features, or
  (B, T, C) tokens when ``backbone_output = "tokens"``); the loss is the weighted sum with
  ``term_weights()`` and every term is logged per epoch;
* ``hash_codes(head, f) -> Tensor bool (B, bits)``: deterministic codes at test time.

``fit`` and ``encode`` are the shared ones of this class: ``hashbench.train`` runs the one
training loop (two views, optimizer and schedule from the config, model selection and early
stopping on the validation split, checkpoints and resume, NaN guard, CPU/CUDA/AMP). A method's
``Config`` subclasses :class:`TrainConfig` (defined in :mod:`hashbench.trainconfig`, which
imports neither this module nor ``hashbench.train``; re-exported here).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .components import HashMethod, Split
from .trainconfig import TrainConfig

__all__ = ["DeepHashMethod", "TrainConfig", "full_precision"]


class DeepHashMethod(HashMethod):
    """Base of the deep methods (see the module docstring). ``input = "images"``.

    The runner sets ``workdir`` (a folder private to the run: checkpoints) before ``fit``.
    After ``fit``, ``report()`` returns the training log stored in the run record.
    """

    input: ClassVar[str] = "images"
    #: what the objective receives from the backbone: "pooled" (B, F) or "tokens" (B, T, C)
    backbone_output: ClassVar[str] = "pooled"
    Config = TrainConfig

    # ---- the method's pieces -------------------------------------------------------------
    def build_head(self, feature_dim: int) -> Any:
        raise NotImplementedError

    def objective(self, head: Any, f1: Any, f2: Any) -> dict[str, Any]:
        raise NotImplementedError

    def term_weights(self) -> dict[str, float]:
        """Weight of each named term of ``objective`` (default 1.0 for terms not listed)."""
        return {}

    def hash_codes(self, head: Any, f: Any) -> Any:
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------
    def fit(self, train: Split, val: Split | None = None) -> None:
        from .train import fit

        self._state = fit(self, train, val, workdir=self.workdir, on_epoch_end=getattr(self, "on_epoch_end", None))

    def encode(self, x: Any) -> np.ndarray:
        from .train import encode

        return encode(self, getattr(self, "_state", None), x)

    def cache_reads(self) -> list[Any]:
        """The frozen-backbone outputs ``fit``/``encode`` will read (:class:`hashbench.banks.CacheRead`)."""
        from .train import cache_reads

        return cache_reads(self)

    def report(self) -> dict[str, Any]:
        state = getattr(self, "_state", None)
        return state.log if state is not None else {}

    def fitted_state(self) -> dict[str, Any]:
        """``{"head": the selected head's state_dict, "feature_dim": int, "backbone": the
        trained backbone's state_dict, or None when it is frozen (its weights are the config's)}``
        (CPU tensors)."""
        from .banks import output_dim
        from .errors import HashbenchError
        from .trainparts import module_state

        state = getattr(self, "_state", None)
        if state is None:
            raise HashbenchError(f"method {self.name}: no fitted state to save (fit it first)")
        frozen = state.backbone.config.frozen
        return {"head": module_state(state.head), "feature_dim": int(output_dim(state.backbone, self.backbone_output)),
                "backbone": None if frozen else module_state(state.backbone.module)}

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the backbone (the config's; its trained weights when ``state`` has them) and
        the head (``build_head(feature_dim)`` with the saved weights), in eval mode."""
        from .features import frozen_backbone
        from .registry import create
        from .train import TrainState, check_config

        cfg = check_config(self)
        if state.get("backbone") is None:
            backbone = frozen_backbone(cfg.backbone, cfg.pretrained, cfg.input_size)
        else:
            backbone = create("backbone", cfg.backbone, pretrained=cfg.pretrained, input_size=cfg.input_size,
                              frozen=False)
            backbone.module.load_state_dict(state["backbone"])
            backbone.module.eval()
        head = self.build_head(int(state["feature_dim"]))
        head.load_state_dict(state["head"])
        head.to(backbone.device).eval()
        self._state = TrainState(head=head, backbone=backbone, log={})

    def encoder(self) -> Any:
        """``hash_codes`` of the selected head as a module: backbone output -> bool (B, bits)."""
        from .errors import HashbenchError

        state = getattr(self, "_state", None)
        if state is None:
            raise HashbenchError(f"method {self.name}: no encoder before fit (or restore)")
        return _head_codes(self, state.head)


def _head_codes(method: DeepHashMethod, head: Any) -> Any:
    """A module whose forward(f) is ``method.hash_codes(head, f)`` (the head is its submodule)."""
    import torch

    class HeadCodes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, f: Any) -> Any:
            return method.hash_codes(self.head, f)

    return HeadCodes().eval()


def full_precision(tensor: Any) -> Any:
    """``tensor`` in at least float32: float16/bfloat16 (autocast outputs) become float32,
    float32 and float64 are returned as they are (an objective fed float64 stays float64, so
    it can be checked against a reference to float64 rounding)."""
    import torch

    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
