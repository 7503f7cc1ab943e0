"""hashbench: a benchmark suite for learning to hash.

Python API in timm's style::

    import hashbench
    hashbench.names("method")                 # ['itq', 'lsh', 'pcah', 'sh', ...]
    itq = hashbench.create("method", "itq", bits=32, seed=0, iterations=50)

``import hashbench`` loads only pluggy (for ``hookimpl``, which plugins import); the registry
(``create``, ``names``) and ``__version__`` load on first use, so that the ``hashbench``
command starts in a few milliseconds and a Ctrl-C at its start is one line, not a traceback.
"""

from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("hashbench")

__all__ = ["create", "names", "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("create", "names"):
        from . import registry

        return getattr(registry, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("hashbench")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module 'hashbench' has no attribute {name!r}")
