"""The ``nora`` command line.

Each ``commands_*`` module in this package registers its subcommands; every subcommand turns a
``NoraError`` into one ``error: ...`` line and exit code 2, and argparse reports malformed flags the
same way.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from rich.text import Text

from nora.cli.common import err_console
from nora.errors import NoraError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nora", description="Noise simulation and robustness for neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("commands_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


class _Notices(logging.Handler):
    """nora's log records (a kernel being built: about a minute, once per machine) as dim lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(Text(self.format(record), style="dim"), soft_wrap=True)


def _show_notices() -> None:
    logger = logging.getLogger("nora")
    if not any(isinstance(h, _Notices) for h in logger.handlers):
        logger.addHandler(_Notices())
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _show_notices()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except NoraError as exc:
        err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished epochs and results are saved")
        return 130
    except BrokenPipeError:  # the reader went away (`nora config keys | head`): nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
