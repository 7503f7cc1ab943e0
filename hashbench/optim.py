"""Optimizers and learning-rate schedules of the training loop: two registry kinds.

A deep method names one of each in its ``optimizer`` and ``schedule`` fields (``hashbench list
optimizers``, ``hashbench list schedules``); a plugin adds its own through the
``register_optimizers`` and ``register_schedules`` hooks, exactly as the built-ins below are
registered.

* :class:`Optimizer`: ``build(params, lr, weight_decay)`` -> a ``torch.optim.Optimizer`` over
  the trained parameters (the head's, plus the backbone's when it is not frozen).
* :class:`Schedule`: ``build(optimizer, epochs)`` -> a ``torch.optim.lr_scheduler.LRScheduler``
  that the loop steps once at the end of every epoch (``epochs`` steps in a whole run).

The loop checkpoints both through ``state_dict()`` and restores them with ``load_state_dict``,
so their state must be plain data (tensors, numbers, strings, lists, dicts). torch is imported
inside ``build`` only: the registry imports this module at the start of every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from . import hookimpl
from .components import Component

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Optimizer(Component):
    """An optimizer (see ``register_optimizers``): built as ``cls()``; :meth:`build` makes the
    torch optimizer of one training run."""

    kind: ClassVar[str] = "optimizer"

    def build(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """A torch optimizer over ``params`` with learning rate ``lr`` (> 0) and ``weight_decay`` (>= 0)."""
        raise NotImplementedError


class Adam(Optimizer):
    name = "adam"
    summary = "Adam (torch.optim.Adam: betas 0.9, 0.999; L2 weight decay)"

    def build(self, params: list[Any], lr: float, weight_decay: float) -> Any:
        import torch

        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class SGD(Optimizer):
    name = "sgd"
    summary = "SGD with momentum 0.9 (torch.optim.SGD; L2 weight decay)"

    def build(self, params: list[Any], lr: float, weight_decay: float) -> Any:
        import torch

        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


class Schedule(Component):
    """A learning-rate schedule (see ``register_schedules``): built as ``cls()``; :meth:`build`
    makes the scheduler of one training run, stepped once per epoch."""

    kind: ClassVar[str] = "schedule"

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        """A ``torch.optim.lr_scheduler.LRScheduler`` of ``optimizer`` for a run of ``epochs`` (>= 1) epochs."""
        raise NotImplementedError


class Constant(Schedule):
    name = "constant"
    summary = "the learning rate stays lr"

    def build(self, optimizer: Any, epochs: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class Cosine(Schedule):
    name = "cosine"
    summary = "cosine annealing of lr towards 0 over the epochs (CosineAnnealingLR, T_max = epochs)"

    def build(self, optimizer: Any, epochs: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


#: the built-ins, registered by the hooks below
OPTIMIZERS = (Adam, SGD)
SCHEDULES = (Constant, Cosine)


@hookimpl
def register_optimizers():
    return list(OPTIMIZERS)


@hookimpl
def register_schedules():
    return list(SCHEDULES)
