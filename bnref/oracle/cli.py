"""``bnref check TARGET``: check a batch-norm implementation against bnref.

Exit status: 0 when every correctness property holds, 1 when any fails, 2 on a
usage error (unknown target, import failure, unsupported dtype).
"""
from __future__ import annotations

import argparse
import sys

from bnref import profiles
from bnref.dtypes import NAMES
from bnref.oracle.check import TargetError, check, load_target
from bnref.oracle.properties import PROPERTIES


def _parser() -> argparse.ArgumentParser:
    from bnref.adapters import ADAPTERS

    p = argparse.ArgumentParser(
        prog="bnref check",
        description="Check a batch-norm implementation against bnref: agreement with the reference within "
                    "dtype- and condition-aware tolerances, invariants, and a measured convention fingerprint.",
        epilog=f"TARGET is an adapter ({', '.join(ADAPTERS)}) or module:attr naming a candidate object, "
               f"class or factory (see docs/oracle.md). Exit 0: all properties hold; 1: a property failed; "
               f"2: usage error.")
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
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        candidate = load_target(args.target)
        report = check(candidate, dtypes=args.dtype, profile=args.profile, seed=args.seed,
                       properties=args.only, progress=not args.no_progress, target=args.target)
    except (TargetError, ValueError) as exc:
        print(f"bnref check: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())
    return 0 if report.ok else 1
