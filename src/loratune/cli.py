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

HOME_HELP = "workspace folder (default: $LORATUNE_HOME or the current directory)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise LoratuneError(f"{message} (see: {self.prog} --help)")


class _Version(argparse.Action):
    """`--version`: the version is looked up only when asked for (reading package metadata costs a little)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"loratune {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("loratune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import loratune

        return getattr(loratune, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of text-generation models.")
    parser.add_argument("--home", help=HOME_HELP)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"loratune.commands.{name}").add(sub)
    for _, command in walk(parser):
        # `loratune loras list --home X` as `loratune --home X loras list`; SUPPRESS keeps the top-level value
        # when the option is not given again after the command.
        command.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
    return parser


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every subcommand below `parser`, depth first: ("loras",), ("loras", "list"), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, child in action.choices.items():
                if id(child) not in seen:  # an alias names the same parser again
                    seen.add(id(child))
                    yield (*path, name), child
                    yield from walk(child, (*path, name))


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
