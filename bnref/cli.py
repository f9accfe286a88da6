"""The ``bnref`` command line: one subcommand per module, imported only when called.

Each subcommand module exposes ``main(argv: list[str]) -> int`` and owns its own
argument parser, so a subcommand whose optional dependencies are missing never
breaks the others.
"""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "selfcheck": ("bnref.selfcheck", "check the kernels against the autograd reference and print a table"),
    "check": ("bnref.oracle.cli", "check another batch-norm implementation against bnref"),
    "conformance": ("bnref.conformance", "run the oracle over every installed implementation: one matrix, one JSON"),
    "mnist": ("bnref.mnist.cli", "train the MNIST experiments (seed post, paper Fig. 1) with bnref's kernels"),
    "bench": ("bnref.bench", "benchmark bnref against NumPy and PyTorch CPU"),
}


def _usage() -> str:
    from bnref._table import render

    lines = ["usage: bnref COMMAND [ARGS...]", "", "commands:",
             render(None, [(name, help_) for name, (_, help_) in COMMANDS.items()], indent="  "), ""]
    lines.append("'bnref COMMAND --help' gives the arguments of one command.")
    return "\n".join(lines)


#: subcommands that run BLAS next to bnref's kernels: started with bnref's thread defaults
_THREAD_DEFAULTS = ("mnist",)


def main(argv: list[str] | None = None) -> int:
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if command_line and argv and argv[0] in _THREAD_DEFAULTS:
        from bnref._threads import reexec

        reexec(argv)  # returns if nothing is missing (or not on POSIX)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from bnref import __version__

        print(f"bnref {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bnref: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"bnref {name}: cannot import {module_name} ({exc}); is the optional extra installed?",
              file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
