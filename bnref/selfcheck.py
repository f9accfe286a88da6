"""``bnref selfcheck``: the kernels against the autograd reference on a fixed set of cases.

Prints one row per (shape, layout, dtype, condition) with the worst relative error
of each output (error / scale of its terms, see :mod:`bnref.testing`), then each
failing comparison with the command that replays it, and exits non-zero if any exceeds its tolerance.
"""
from __future__ import annotations

import argparse
import sys
import time

import bnref
from bnref._table import render
from bnref.dtypes import KERNEL_DTYPES
from bnref.strategies import make_case
from bnref.testing import check_against_reference

#: (shape, channel_axis, condition); every row runs in each dtype the kernels take
CASES = [
    ((64, 10), 1, "well"),
    ((8, 3, 5, 5), 1, "well"),
    ((8, 5, 5, 3), -1, "well"),
    ((4, 3, 4, 4, 2), 1, "well"),
    ((6, 4, 7), 1, "eps_scale"),
    ((2, 6), 1, "minimal"),
    ((16, 4, 3, 3), 1, "constant"),
    ((32, 6, 4, 4), 1, "offset"),   # mean 1e2..1e4, std 1e-2..1
    ((256, 8), 1, "offset-1e4"),    # the acceptance row: mean 1e4, std 1e-2 (bnref.strategies.FIXED_CONDITIONS)
]

COLUMNS = ("y", "dx", "dgamma", "dbeta", "gx", "ggamma", "gdy")


def replay_command(case) -> str:
    """The shell command that reruns one row's check and raises AssertionError if it fails."""
    return (f"python -c \"import bnref, bnref.strategies, bnref.testing; "
            f"bnref.testing.check_against_reference(bnref, {case.replay()})\"")


def run(seed: int = 0, stream=sys.stdout) -> bool:
    print("bnref selfcheck: worst |error| / scale of its terms for each output (see bnref.testing)", file=stream)
    rows, failures = [], []
    start = time.perf_counter()
    for shape, axis, condition in CASES:
        for dtype in KERNEL_DTYPES:
            case = make_case(shape, dtype, axis, condition, seed)
            results = {c.quantity: c for c in check_against_reference(bnref, case, raise_on_failure=False)}
            failed = [str(c) for c in results.values() if not c.ok]
            cells = [f"{results[col].relative_error:.1e}" if col in results else "-" for col in COLUMNS]
            rows.append((shape, axis, dtype, condition, *cells, "FAIL" if failed else "pass"))
            if failed:
                failures.append("\n".join([f"{shape} axis {axis} {dtype} {condition}:",
                                            *(f"  {text}" for text in failed), f"  replay: {replay_command(case)}"]))
    header = ("shape", "axis", "dtype", "condition", *COLUMNS, "result")
    print(render(header, rows, align="<><<" + ">" * len(COLUMNS) + "<"), file=stream)
    for failure in failures:
        print(f"FAIL {failure}", file=stream)
    print(f"{'FAILURES' if failures else 'all passed'} in {time.perf_counter() - start:.1f} s", file=stream)
    return not failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnref selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for the inputs (default 0)")
    args = parser.parse_args(argv)
    return 0 if run(args.seed) else 1
