"""The ``hashbench`` console script: :func:`hashbench.cli.main`, imported inside a guard so that
a Ctrl-C while the command starts (its imports) is the one line ``hashbench: interrupted``
(exit code 130), as it is once the command runs."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("hashbench: interrupted", file=sys.stderr)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
