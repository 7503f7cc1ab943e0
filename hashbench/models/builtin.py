"""Registers the bundled backbones through the same hook a third-party package uses."""

from .. import hookimpl


@hookimpl
def register_backbones():
    from .backbones import BUILTIN_BACKBONES

    return list(BUILTIN_BACKBONES)
