"""The contract of every plugin kind.

A plugin is a module with functions named like the hooks below, each decorated with
``@hashbench.hookimpl``. Built-in components (``hashbench.baselines.*``, the bundled datasets,
executors, augmentation recipes, optimizers and schedules) register through these same hooks, discovered through the ``hashbench`` entry-point
group, exactly as a third-party package does (see docs/plugins.md).

Every hook returns a list of component *classes*. Every class has

* ``name``: a unique lower-case string, used on the command line and in ``hashbench.create``;
* ``summary``: one line for ``hashbench list``;
* ``Config``: a dataclass whose fields are the component's parameters, with defaults.
  ``hashbench.create(kind, name, **params)`` checks ``params`` against these fields.

Hooks are called once, when the registry first loads. A plugin module must not import heavy
optional dependencies (torch, ray, faiss ...) at module level: import them where they are used
and raise :class:`hashbench.errors.HashbenchError` with the install command when they are missing.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hashbench")


@hookspec
def register_methods() -> list[type]:
    """Return hashing methods: subclasses of :class:`hashbench.components.HashMethod`.

    A method is built as ``cls(bits=..., seed=..., **params)``. ``fit(train, val)`` learns from
    the training split (``val`` only for model selection, never the queries);
    ``encode(x)`` maps an array of N items to a bool array of shape (N, bits): True is bit 1.
    The class attribute ``input`` says what ``x`` is: ``"features"`` (float array (N, D)).
    """


@hookspec
def register_backbones() -> list[type]:
    """Return feature extractors (image -> feature vector), e.g. a wrapper over timm models.

    A backbone is built as ``cls(**params)`` and maps a float tensor of images
    (B, 3, H, W), normalized as its ``data_config`` says, to features (B, feature_dim).
    """


@hookspec
def register_sorters() -> list[type]:
    """Return differentiable sorters.

    A sorter is built as ``cls(**params)`` and called on scores of shape (B, n); it returns
    P of shape (B, n, n), each row summing to 1, such that P @ scores approximates the scores
    sorted in descending order. Its temperature or regularization parameter going to 0 makes
    P tend to the exact permutation matrix.
    """


@hookspec
def register_losses() -> list[type]:
    """Return loss terms: callable classes built as ``cls(**params)``.

    Calling one on tensors returns a dict of named scalar terms; a method's objective is the
    weighted sum of the terms (``hashbench.losses.weighted_sum``), with weights from its config,
    and every term is logged per epoch.
    """


@hookspec
def register_datasets() -> list[type]:
    """Return protocols: subclasses of :class:`hashbench.components.Protocol`.

    A protocol is built as ``cls(**params)``. ``load()`` returns :class:`hashbench.components.Splits`
    (train, val, query, database), deterministic for equal params. Class attributes declare
    ``num_classes``, ``multi_label``, ``topk`` (the K of mAP@K, None for the whole database),
    ``relevance`` (one line), ``disjoint`` (pairs of split names that must share no item; the
    runner checks them on every run) and ``published`` (published mAP for this exact protocol).
    """


@hookspec
def register_executors() -> list[type]:
    """Return executors: subclasses of :class:`hashbench.components.Executor`.

    An executor is built as ``cls(**params)``; ``map(fn, tasks)`` applies a picklable function to
    each task and yields the results as they finish, in any order, each exactly once. ``fn``
    writes the run record itself, so every executor produces the same records.

    Every field of its ``Config`` is a command-line option of ``run`` and ``ablate``,
    ``--<field-with-dashes>``, whose help is the field's :func:`hashbench.params.param` doc and
    limits; the class attribute ``cli_options`` (a dict, field -> ``"--flag"``, or None for no
    flag) names another (see :func:`hashbench.cli.executor_flags`).
    """


@hookspec
def register_augmentations() -> list[type]:
    """Return augmentation recipes: subclasses of :class:`hashbench.augment.Recipe`.

    A recipe is built as ``cls()`` (a deep method names it in its ``augment`` field).
    ``transform(size)`` returns the per-image transform: a callable from a float32 tensor
    (3, size, size) with values in [0, 1] to one of the same shape, dtype and range, drawing its
    randomness from torch's global generator only (the training loop seeds it, so views are
    reproducible); torchvision ``v2`` transforms do. The class attribute ``version`` (int) is
    part of the view bank's cache key: bump it whenever ``transform`` changes.
    """


@hookspec
def register_optimizers() -> list[type]:
    """Return optimizers: subclasses of :class:`hashbench.optim.Optimizer`.

    An optimizer is built as ``cls()`` (a deep method names it in its ``optimizer`` field);
    ``build(params, lr, weight_decay)`` returns a ``torch.optim.Optimizer`` over ``params`` (a
    list of parameters) with learning rate ``lr`` and ``weight_decay`` from the method's config.
    Its ``state_dict()`` must be plain data (it is checkpointed).
    """


@hookspec
def register_schedules() -> list[type]:
    """Return learning-rate schedules: subclasses of :class:`hashbench.optim.Schedule`.

    A schedule is built as ``cls()`` (a deep method names it in its ``schedule`` field);
    ``build(optimizer, epochs)`` returns a ``torch.optim.lr_scheduler.LRScheduler`` of that
    optimizer, which the training loop steps once at the end of every epoch (``epochs`` epochs
    in all). Its ``state_dict()`` must be plain data (it is checkpointed).
    """
