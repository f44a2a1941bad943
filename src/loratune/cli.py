"""`loratune` command line: parse, call the library, print. Errors a user can fix print as one line, exit 1.

Each command lives in its own module under loratune/commands/.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from loratune.commands import COMMANDS
from loratune.errors import LoratuneError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise LoratuneError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of text-generation models.")
    parser.add_argument("--home", help="workspace folder (default: $LORATUNE_HOME or the current directory)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"loratune.commands.{name}").add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra and not getattr(args, "takes_overrides", False):
            raise LoratuneError(f"unknown argument(s): {' '.join(extra)}")
        return args.run(args, extra)
    except LoratuneError as e:
        print(f"loratune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loratune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `loratune data check ... | head -1`: the reader left; stop quietly, as Unix tools do
        _silence_stdout()
        return 128 + signal.SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
