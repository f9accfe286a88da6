"""``bnref check TARGET``: check a batch-norm implementation against bnref.

Exit status: 0 when every correctness property holds; 1 when any fails -- a candidate that
raises, returns something other than the promised arrays or exceeds ``--timeout`` fails the
property that called it -- or when a call stuck in C code had to end the run; 2 on a usage
error (unknown target, import failure, unsupported dtype); 130 on Ctrl-C, after printing the
partial report (what ran, the rest marked "not run").

``--json -`` writes the JSON report to stdout and the human report to stderr; the candidate's
own output (Python prints, and C-level writes to file descriptor 1) goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from bnref import profiles
from bnref.dtypes import NAMES
from bnref.oracle.check import DEFAULT_TIMEOUT, CheckInterrupted, TargetError, check, load_target
from bnref.oracle.properties import PROPERTIES

#: the exit status after Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    from bnref.adapters import ADAPTERS

    p = argparse.ArgumentParser(
        prog="bnref check",
        description="Check a batch-norm implementation against bnref: agreement with the reference within "
                    "dtype- and condition-aware tolerances, invariants, and a measured convention fingerprint.",
        epilog=f"TARGET is an adapter ({', '.join(ADAPTERS)}) or module:attr naming a candidate object, "
               f"class or factory (module is looked up in the current directory first; see docs/oracle.md). "
               f"Exit 0: all properties hold; 1: a property failed; 2: usage error; 130: interrupted.")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--dtype", action="append", choices=NAMES,
                   help="dtype to check (repeatable; default: every dtype the candidate supports)")
    p.add_argument("--profile", default=profiles.DEFAULT, choices=(*profiles.PROFILES, *profiles.ALIASES),
                   help="examples per property and dtype: "
                        + "; ".join(f"{q.name} {q.max_examples} ({q.purpose})" for q in profiles.PROFILES.values())
                        + f". Default {profiles.DEFAULT}"
                        + "".join(f"; {alias!r} is read as {name}" for alias, name in profiles.ALIASES.items())),
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    p.add_argument("--only", action="append", metavar="PROPERTY", choices=[q.name for q in PROPERTIES],
                   help="run only this property (repeatable)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the report as JSON; '-': JSON to stdout, the human report to stderr")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit of one candidate call (default {DEFAULT_TIMEOUT:g}; 0: none); a call past "
                        f"it fails its property")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 to stderr for the duration; yield a stream on the real stdout.

    Catches what C code prints as well as Python's prints. Where stdout is no plain file
    descriptor 1 (a notebook, a captured stream), only Python-level redirection applies.
    """
    try:
        real_fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        real_fd = None
    if real_fd != 1:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(saved, "w", encoding="utf-8", closefd=False) as real_stdout:
            yield real_stdout
            real_stdout.flush()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _emit(report, args, json_stream) -> None:
    """The human report (stdout, or stderr with ``--json -``) and the JSON report if asked for."""
    print(report.render(), file=sys.stderr if json_stream is not None else sys.stdout, flush=True)
    if json_stream is not None:
        json_stream.write(report.to_json() + "\n")
        json_stream.flush()
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.timeout < 0:
        print("bnref check: --timeout must be >= 0", file=sys.stderr)
        return 2
    to_stdout = args.json == "-"
    with (_stdout_to_stderr() if to_stdout else contextlib.nullcontext(None)) as json_stream:
        try:
            candidate = load_target(args.target)
            report = check(candidate, dtypes=args.dtype, profile=args.profile, seed=args.seed,
                           properties=args.only, progress=not args.no_progress, target=args.target,
                           timeout=args.timeout, on_hang=lambda partial: _emit(partial, args, json_stream))
        except (TargetError, ValueError) as exc:
            print(f"bnref check: {exc}", file=sys.stderr)
            return 2
        except CheckInterrupted as exc:
            _emit(exc.report, args, json_stream)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            print("bnref check: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        _emit(report, args, json_stream)
    return 0 if report.ok else 1
