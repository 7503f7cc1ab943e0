"""The plugin manager and one registry per component kind.

Plugins are modules found through the ``hashbench`` entry-point group. Those shipped in the
``hashbench`` distribution (the built-ins) always load; the environment variable
``HASHBENCH_PLUGINS`` restricts the external ones: unset loads all, a comma-separated list of
entry-point or distribution names loads only those, and an empty value or ``none`` loads none.
A plugin that fails to import stops start-up with a one-line error naming it (skipping it
would silently change which components a run uses).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import HashbenchError, UnknownComponentError

ENTRY_POINT_GROUP = "hashbench"
PLUGINS_ENV = "HASHBENCH_PLUGINS"
BUILTIN_DISTRIBUTION = "hashbench"

#: kind -> the hook that registers it
HOOKS = {
    "method": "register_methods",
    "backbone": "register_backbones",
    "sorter": "register_sorters",
    "loss": "register_losses",
    "dataset": "register_datasets",
    "executor": "register_executors",
    "augmentation": "register_augmentations",
    "optimizer": "register_optimizers",
    "schedule": "register_schedules",
}
PLURAL = {kind: kind[:-1] + "ies" if kind.endswith("y") else kind + ("es" if kind.endswith("s") else "s") for kind in HOOKS}
_PLURALS = {plural: kind for kind, plural in PLURAL.items()}


def normalize_kind(kind: str) -> str:
    """Accept ``method`` or ``methods``; raise a one-line error for anything else."""
    kind = kind.lower()
    if kind in HOOKS:
        return kind
    if kind in _PLURALS:
        return _PLURALS[kind]
    raise HashbenchError(f"unknown component kind '{kind}' (kinds: {', '.join(_PLURALS)})")


@dataclass(frozen=True)
class Entry:
    """A registered component class and the plugin that provides it.

    ``claimed`` is True when ``name`` is not registered itself but the class claims it
    (see :meth:`Registry.entry`), e.g. any timm model name for the generic timm backbone.
    """

    name: str
    cls: type
    plugin: str
    claimed: bool = False

    @property
    def summary(self) -> str:
        return getattr(self.cls, "summary", "") or (self.cls.__doc__ or "").strip().split("\n")[0]


class Registry:
    """The components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, cls: type, plugin: str) -> None:
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name or name != name.lower():
            raise HashbenchError(f"plugin {plugin}: {self.kind} class {cls.__qualname__} needs a lower-case 'name'")
        if name in self._entries and self._entries[name].cls is not cls:
            other = self._entries[name].plugin
            raise HashbenchError(f"{self.kind} '{name}' is registered twice: by {other} and by {plugin}")
        self._entries[name] = Entry(name, cls, plugin)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def entry(self, name: str) -> Entry:
        """The entry registered as ``name``; else the first class whose ``claims(name)`` is true.

        A class that can stand for a family of names (the timm backbone: any timm model) defines
        ``claims(name) -> bool`` and ``from_name(name, **params)``, and optionally
        ``suggest(name) -> list[str]`` for the error's close names. Exact names win.
        """
        if name in self._entries:
            return self._entries[name]
        for entry in self.entries():
            claims = getattr(entry.cls, "claims", None)
            if claims is not None and claims(name):
                return Entry(name, entry.cls, entry.plugin, claimed=True)
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        for entry in self.entries():  # classes standing for families suggest from them too
            suggest = getattr(entry.cls, "suggest", None)
            if suggest is not None:
                close += [c for c in suggest(name) if c not in close]
        hint = f" Did you mean: {', '.join(close[:3])}?" if close else ""
        raise UnknownComponentError(
            f"unknown {self.kind} '{name}'.{hint} (hashbench list {PLURAL[self.kind]} shows all)"
        )

    def get(self, name: str) -> type:
        return self.entry(name).cls

    def create(self, name: str, **params: Any) -> Any:
        entry = self.entry(name)
        if entry.claimed:
            return entry.cls.from_name(name, **params)
        return entry.cls(**params)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered exactly (claimed names are not included)."""
        return name in self._entries


def _allowed_external() -> set[str] | None:
    value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip() and v.strip().lower() != "none"}


def _plugin_label(ep: metadata.EntryPoint) -> tuple[str, bool]:
    dist = ep.dist.name if ep.dist is not None else "?"
    builtin = dist == BUILTIN_DISTRIBUTION
    return (ep.value if builtin else f"{dist}:{ep.name}"), builtin


def make_plugin_manager(extra_plugins: dict[str, Any] | None = None) -> pluggy.PluginManager:
    """A plugin manager with every allowed entry-point plugin (and ``extra_plugins``) registered."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    allowed = _allowed_external()
    external: set[str] = set()  # names HASHBENCH_PLUGINS may use: entry points and distributions
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        label, builtin = _plugin_label(ep)
        if not builtin:
            dist = ep.dist.name if ep.dist is not None else ""
            external.update(n for n in (ep.name, dist) if n)
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
        if pm.get_plugin(label) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin stops start-up: skipping it would silently change what runs
            raise HashbenchError(f"plugin {label} failed to load: {type(exc).__name__}: {exc}") from exc
        pm.register(module, name=label)
    unknown = sorted((allowed or set()) - external)
    if unknown:
        raise HashbenchError(
            f"{PLUGINS_ENV} names {', '.join(unknown)}, which no installed plugin is "
            f"(installed: {', '.join(sorted(external)) or 'none besides the built-ins'}; 'none' loads none)"
        )
    for label, module in (extra_plugins or {}).items():
        pm.register(module, name=label)
    return pm


def build_registries(pm: pluggy.PluginManager) -> dict[str, Registry]:
    """Call every register_* hook and index the returned classes by kind and name."""
    registries = {kind: Registry(kind) for kind in HOOKS}
    for kind, hook_name in HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            label = pm.get_name(impl.plugin) or impl.plugin_name
            try:
                classes = impl.function()
            except Exception as exc:  # name the plugin, in one line
                raise HashbenchError(f"plugin {label}: {hook_name} raised {type(exc).__name__}: {exc}") from exc
            if classes is not None and not isinstance(classes, (list, tuple)):
                raise HashbenchError(f"plugin {label}: {hook_name} must return a list of classes, "
                                     f"got {type(classes).__name__}")
            for cls in classes or ():
                if not isinstance(cls, type):
                    raise HashbenchError(f"plugin {label}: {hook_name} returned {cls!r}, not a class")
                registries[kind].add(cls, label)
    return registries


_REGISTRIES: dict[str, Registry] | None = None


def registries() -> dict[str, Registry]:
    """The registries of this process, loaded once on first use."""
    global _REGISTRIES
    if _REGISTRIES is None:
        _REGISTRIES = build_registries(make_plugin_manager())
    return _REGISTRIES


def reload(extra_plugins: dict[str, Any] | None = None) -> dict[str, Registry]:
    """Reload every plugin (after installing one, or changing ``HASHBENCH_PLUGINS``)."""
    global _REGISTRIES
    _REGISTRIES = build_registries(make_plugin_manager(extra_plugins))
    return _REGISTRIES


def registry(kind: str) -> Registry:
    return registries()[normalize_kind(kind)]


def names(kind: str, pattern: str = "*") -> list[str]:
    """Registered names of a kind matching an fnmatch ``pattern``, e.g. ``names("method", "*h")``."""
    return registry(kind).names(pattern)


def create(kind: str, name: str, **config: Any) -> Any:
    """Build the component ``name`` of ``kind`` with ``config`` as its parameters.

    ``create("method", "itq", bits=32, seed=0, iterations=50)``; unknown names and parameters
    raise one-line :class:`HashbenchError`s that list the closest valid ones.
    """
    return registry(kind).create(name, **config)
