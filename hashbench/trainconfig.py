"""The configuration every deep method shares, and its checks.

:class:`TrainConfig` is the base of every deep method's ``Config`` (``hashbench.deep``
re-exports it); its field limits are declared next to each field (:mod:`hashbench.params`) and
checked by :func:`hashbench.components.build_config` when a method is built, so a bad value
fails before training starts, as ``method cibhash: lr must be > 0, got -1``. Names of
registered components (``augment``, ``optimizer``, ``schedule``) must be registered: a
plugin can add its own (``register_augmentations``, ``register_optimizers``,
``register_schedules``). :func:`check_config` adds what is not a field's limit: the method's
Config is a TrainConfig and its ``backbone_output`` is one the backbone gives.

This module imports neither :mod:`hashbench.deep` nor :mod:`hashbench.train` (both import it),
nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import HashbenchError
from .models.backbones import OUTPUTS
from .params import param
from .space import log_uniform


@dataclass(frozen=True)
class TrainConfig:
    """Fields every deep method has; a method's ``Config`` subclasses this and adds its own.

    Redeclaring a field in a subclass with a plain default (``epochs: int = 4``) keeps the
    limits declared here. A subclass with rules of its own defines ``__post_init__`` and calls
    ``super().__post_init__()`` first.
    """

    backbone: str = param("tf_efficientnet_lite0",
                          doc="feature extractor: a registered backbone or a timm model name")
    pretrained: bool | str = param(True, doc="backbone weights: True (offline source or timm's), False (random), or a file")
    input_size: int | None = param(64, doc="square input side in pixels; None: the backbone's own")
    frozen: bool = param(True, doc="keep the backbone fixed (its outputs are cached; the view bank needs it)")
    augment: str = param("light", registered="augmentation",
                         doc="augmentation recipe of the two views (hashbench list augmentations)")
    bank_views: int = param(8, ge=0, doc="frozen backbone: cached outputs of this many views (0 or >= 2) per image, "
                                         "two sampled per epoch; 0 = augment at every step")
    epochs: int = param(10, ge=1, doc="training epochs")
    batch_size: int = param(64, ge=2, doc="images per step; N // batch_size steps per epoch (1 when N < batch_size)")
    lr: float = param(1e-3, gt=0, tune=log_uniform(1e-5, 1e-2),
                      doc="learning rate of the head (and the backbone when not frozen)")
    weight_decay: float = param(0.0, ge=0, doc="the optimizer's weight decay")
    optimizer: str = param("adam", registered="optimizer", doc="optimizer of the trained parameters (hashbench list optimizers)")
    schedule: str = param("cosine", registered="schedule",
                          doc="learning-rate schedule, stepped once per epoch (hashbench list schedules)")
    val_every: int = param(5, ge=1, doc="validate every this many epochs and at the last (val mAP against train)")
    patience: int = param(3, ge=0, doc="stop after this many validations without improvement; 0 = never early")
    amp: bool = param(True, doc="mixed precision on CUDA (bfloat16 where supported, else float16); none on CPU")

    def __post_init__(self) -> None:
        """Rules beyond one field's limits: ValueError("<field> must ..., got ...") (the
        builder adds the owner). Cheap; subclasses call it from their own ``__post_init__``."""
        views = self.bank_views
        if isinstance(views, int) and not isinstance(views, bool) and views != 0 and views < 2:
            raise ValueError(f"bank_views must be 0 (no bank) or >= 2, got {views}")


def check_config(method: Any) -> TrainConfig:
    """``method.config``, a TrainConfig, for a method whose ``backbone_output`` the backbone
    gives ("pooled" or "tokens"); else a one-line HashbenchError naming the method. The field
    limits were checked when the method was built."""
    cfg = method.config
    owner = f"method {method.name}"
    if not isinstance(cfg, TrainConfig):
        raise HashbenchError(f"{owner}: its Config must subclass hashbench.deep.TrainConfig")
    if method.backbone_output not in OUTPUTS:
        raise HashbenchError(f"{owner}: backbone_output must be one of {', '.join(OUTPUTS)}")
    return cfg
