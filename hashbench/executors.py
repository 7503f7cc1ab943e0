"""The built-in ``local`` executor (runs tasks one after another in this process)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from . import hookimpl
from .components import Executor


class LocalExecutor(Executor):
    """Runs the tasks sequentially in the calling process, in order."""

    name = "local"
    summary = "run the grid sequentially in this process"

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        for task in tasks:
            yield fn(task)


@hookimpl
def register_executors():
    return [LocalExecutor]
