"""``bnref conformance``: run the oracle over every installed implementation and draw one matrix.

Each target runs ``bnref check TARGET --json FILE --no-progress`` in its own process with a
time limit, so a candidate that hangs or crashes its interpreter costs one cell row, never the
command. The JSON reports land in ``--out`` (default ``conformance-out/``) next to:

* ``conformance.md`` / ``conformance.txt``: the matrix (one row per implementation and dtype,
  one column per oracle property; cells pass / FAIL / not provided / not run / timed out) and
  the conventions table (the fingerprint's rows, one line per implementation);
* ``conformance.png``: the matrix as a heatmap (needs matplotlib; skipped with a note without it);
* ``conformance.json``: every run and the merged matrix, which ``bnref conformance merge`` reads
  back together with reports made elsewhere (another virtual environment, a GPU machine).

Exit status: 0 when every report was produced (failed properties are findings, not errors);
1 when a run timed out or ended without a report; 2 on a usage error; 130 on Ctrl-C, after
rendering what ran.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnref import __version__, profiles
from bnref._progress import Progress
from bnref._table import render
from bnref.dtypes import NAMES

__all__ = ["REQUIRES", "Run", "Row", "installed", "missing_modules", "run_target", "load_runs", "merge", "matrix_rows",
           "conventions_rows", "render_text", "heatmap", "write_outputs", "main"]

#: adapter -> the top-level module(s) its framework needs (None: NumPy/Numba only, always installed).
#: An adapter missing here is run anyway; a run that fails for a missing module reads "not installed".
REQUIRES: dict[str, str | tuple[str, ...] | None] = {
    "bnref": None,
    "bnref-mixed": None,
    "seed": None,
    "torch": "torch",
    "torch-channels-last": "torch",
    "torch-mixed": "torch",
    "flax": "flax",
    "flax-two-pass": "flax",
    "flax-bf16": "flax",
    "flax-sync": "flax",
    "flax-nnx": "flax",
    "flax-nnx-two-pass": "flax",
    "keras": ("keras", "jax"),
    "keras-mixed-bf16": ("keras", "jax"),
    "paddle": "paddle",
    "mlx": "mlx",
    "keras-tensorflow": ("keras", "tensorflow"),
    "tf-keras": "tf_keras",
    "tf-keras-nonfused": "tf_keras",
    "tensorflow": "tensorflow",
    "tensorflow-fused": "tensorflow",
    "tensorflow-fused-nchw": "tensorflow",
    "tinygrad": "tinygrad",
    "keras-torch": ("keras", "torch"),
    "torch-compile": "torch",
    "equinox": "equinox",
    "equinox-batch": "equinox",
    "haiku": "haiku",
    "onnxruntime": "onnxruntime",
}

#: the outcome of one run; only REPORT carries a report
REPORT, TIMED_OUT, NOT_INSTALLED, ERROR = "report", "timed out", "not installed", "error"
#: what each outcome other than REPORT writes in every cell of its row
_CELL = {TIMED_OUT: "timed out", NOT_INSTALLED: "not installed", ERROR: "error"}
#: cell -> heatmap colour, in legend order
COLOURS: dict[str, str] = {
    "pass": "#4daf4a", "FAIL": "#e41a1c", "not provided": "#bdbdbd", "skipped": "#e0e0e0",
    "not run": "#f0f0f0", "timed out": "#ff7f00", "not installed": "#ffffff", "error": "#984ea3",
}
#: conventions-table column -> the fingerprint key it reads (a prefix: the half-precision rows
#: carry the half dtype in their name)
CONVENTIONS: dict[str, str] = {
    "eps": "eps",
    "normalizing variance": "normalizing_variance",
    "running variance": "running_variance",
    "momentum": "momentum",
    "single value per channel": "single_value_per_channel",
    "eps stored as": "eps_stored_as",
    "momentum stored as": "momentum_stored_as",
    "float64 computed in": "float64_computed_in",
    "accumulation precision": "statistics_accumulated_in",
}
FORMAT = "bnref-conformance"
#: the exit status after Ctrl-C, as ``bnref check`` gives it
EXIT_INTERRUPTED = 130
DEFAULT_OUT = "conformance-out"
#: the matrix column of the convention fingerprint's own defects (a NaN from a probe: the run fails)
FINGERPRINT = "fingerprint"
DEFAULT_TIMEOUT = 600.0


@dataclass
class Run:
    """One target's run: its outcome, and the oracle's JSON report when there is one."""

    target: str
    outcome: str                     # report / timed out / not installed / error
    report: dict | None = None
    message: str = ""
    seconds: float = 0.0
    dtypes: list[str] = field(default_factory=list)   # asked for ([] : the candidate's own)


@dataclass
class Row:
    """One matrix row: an implementation in one dtype, with one cell per property."""

    target: str
    implementation: str              # "candidate version", from the report
    dtype: str                       # "" for a run without a report
    cells: dict[str, str]
    outcome: str = REPORT


# ----------------------------------------------------------------------------- running


def installed(target: str) -> bool:
    """Whether ``target``'s framework can be imported (looked up, not imported).

    ``module:attr`` targets and adapters missing from :data:`REQUIRES` count as installed: their run tells.
    """
    return not missing_modules(target)


def missing_modules(target: str) -> list[str]:
    """The modules of :data:`REQUIRES` for ``target`` that cannot be found (looked up, not imported)."""
    modules = REQUIRES.get(target) or ()
    missing = []
    for module in (modules,) if isinstance(modules, str) else modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def _file_stem(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", target)


def run_target(target: str, out: Path, *, profile: str, dtypes: list[str], timeout: float, seed: int = 0,
               only: list[str] | None = None) -> Run:
    """Run ``bnref check target`` in a child Python with a ``timeout`` (seconds; 0: none).

    Writes ``out/<target>.json`` (the report), ``out/<target>.txt`` (the human report) and
    ``out/<target>.log`` (the child's stderr). A child past ``timeout`` is killed with its
    process group and the run reads "timed out".
    """
    stem = _file_stem(target)
    json_path, txt_path, log_path = out / f"{stem}.json", out / f"{stem}.txt", out / f"{stem}.log"
    json_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bnref", "check", target, "--json", str(json_path), "--no-progress",
           "--profile", profile, "--seed", str(seed)]
    for dtype in dtypes:
        cmd += ["--dtype", dtype]
    for prop in only or ():
        cmd += ["--only", prop]
    start = time.perf_counter()
    with open(txt_path, "wb") as stdout, open(log_path, "wb") as stderr:
        # its own session: a kill on timeout reaches whatever the candidate started too
        child = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                 start_new_session=os.name == "posix")
        try:
            rc = child.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            _kill(child)
            return Run(target, TIMED_OUT, message=f"no report after {timeout:g} s",
                       seconds=time.perf_counter() - start, dtypes=list(dtypes))
        except BaseException:
            _kill(child)
            raise
    seconds = time.perf_counter() - start
    report = _read_json(json_path)
    if isinstance(report, dict) and "results" in report:
        return Run(target, REPORT, report=report, seconds=seconds, dtypes=list(dtypes))
    last = _last_line(log_path)
    outcome = NOT_INSTALLED if "needs its framework" in last or "No module named" in last else ERROR
    return Run(target, outcome, message=f"exit {rc}: {last}" if last else f"exit {rc}, no report",
               seconds=seconds, dtypes=list(dtypes))


def _kill(child: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(child.pid, signal.SIGKILL)
        else:  # pragma: no cover
            child.kill()
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# ----------------------------------------------------------------------------- reading and merging


def load_runs(path: str | Path) -> list[Run]:
    """The runs in a file: a ``conformance.json`` (its runs) or one ``bnref check --json`` report.

    Raises:
        ValueError: the file is not JSON, or neither kind of file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if isinstance(data, dict) and data.get("format") == FORMAT:
        runs = []
        for item in data.get("runs") or []:
            if isinstance(item, dict) and item.get("target"):
                runs.append(Run(str(item["target"]), str(item.get("outcome", ERROR)),
                                item.get("report") if isinstance(item.get("report"), dict) else None,
                                str(item.get("message", "")), _seconds(item),
                                [str(d) for d in item.get("dtypes") or []]))
        return runs
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        target = str(data.get("target") or data.get("candidate") or Path(path).stem)
        return [Run(target, REPORT, report=data, seconds=_seconds(data))]
    raise ValueError(f"{path}: neither a bnref check --json report nor a {FORMAT} file")


def _seconds(data: dict) -> float:
    try:
        return float(data.get("seconds") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _implementation(run: Run) -> str:
    """The candidate's name and version as its report gives them (the name left out where it is the target's)."""
    report = run.report or {}
    version = str(report.get("version") or "").strip()
    name = str(report.get("candidate") or run.target)
    if name == run.target:
        return version or name
    return f"{name} {version}".strip()


def _report_rows(run: Run) -> list[Row]:
    report = run.report or {}
    by_dtype: dict[str, dict[str, str]] = {}
    for result in report.get("results") or []:
        if not isinstance(result, dict):
            continue
        dtype, prop = str(result.get("dtype", "")), str(result.get("property", ""))
        if prop:
            by_dtype.setdefault(dtype, {})[prop] = str(result.get("status", "not run"))
    for dtype in report.get("dtypes") or []:
        by_dtype.setdefault(str(dtype), {})
    fingerprint = report.get("fingerprint")
    if isinstance(fingerprint, dict):
        for dtype, cells in by_dtype.items():
            cells[FINGERPRINT] = "FAIL" if _fingerprint_findings(fingerprint, dtype) else "pass"
    return [Row(run.target, _implementation(run), dtype, cells) for dtype, cells in by_dtype.items()]


def _fingerprint_findings(fingerprint: dict, dtype: str) -> list[str]:
    """The fingerprint's defects charged to ``dtype``: those that name it, and those naming no dtype
    of the report in the dtype the fingerprint was measured in."""
    findings = [str(f) for f in fingerprint.get("findings") or []]
    named = lambda f, d: re.search(rf"\b{d}\b", f) is not None  # noqa: E731
    return [f for f in findings
            if named(f, dtype) or (dtype == fingerprint.get("dtype") and not any(named(f, d) for d in NAMES))]


def merge(runs: list[Run]) -> tuple[list[Run], list[Row]]:
    """Merge runs by (target, dtype): a later run's rows replace an earlier one's.

    A target with a report in any run loses its rows without one (a framework missing here
    but checked elsewhere shows the report). Returns the runs that still contribute a row,
    in first-seen target order, and the matrix rows sorted by that order and bnref's dtype order.
    """
    rows: dict[tuple[str, str], tuple[int, Row]] = {}
    order: dict[str, int] = {}
    for index, run in enumerate(runs):
        order.setdefault(run.target, len(order))
        new = _report_rows(run) if run.outcome == REPORT else [
            Row(run.target, _implementation(run), dtype, {}, run.outcome) for dtype in (run.dtypes or [""])]
        for row in new:
            rows[(row.target, row.dtype)] = (index, row)
    with_report = {t for (t, _), (_, row) in rows.items() if row.outcome == REPORT}
    kept = {key: value for key, value in rows.items()
            if value[1].outcome == REPORT or key[0] not in with_report}
    used = sorted({index for index, _ in kept.values()})
    merged_rows = sorted((row for _, row in kept.values()), key=lambda r: (order[r.target], _dtype_rank(r.dtype)))
    return [runs[i] for i in used], merged_rows


def _dtype_rank(dtype: str) -> tuple[int, str]:
    """bnref's dtype order (float32, float64, float16, bfloat16), then any other name."""
    return (NAMES.index(dtype), "") if dtype in NAMES else (len(NAMES), dtype)


def _properties(rows: list[Row]) -> list[str]:
    """The oracle's properties in its own order, then any others the reports name."""
    try:
        from bnref.oracle.properties import PROPERTIES
        known = [p.name for p in PROPERTIES]
    except Exception:  # noqa: BLE001  (rendering reports never depends on the oracle importing)
        known = []
    seen = [p for row in rows for p in row.cells]
    return [p for p in known if p in seen] + list(dict.fromkeys(p for p in seen if p not in known))


def _cell(row: Row, prop: str) -> str:
    return _CELL.get(row.outcome) or row.cells.get(prop, "not run")


def matrix_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The matrix as (header, rows of cells): implementation, dtype, one column per property."""
    props = _properties(rows)
    body = [[f"{row.target} ({row.implementation})" if row.implementation != row.target else row.target,
             row.dtype or "-", *(_cell(row, p) for p in props)] for row in rows]
    return ["implementation", "dtype", *props], body


def _fingerprint_value(fingerprint: dict, key: str) -> str:
    for name, value in fingerprint.items():
        if name == key or name.startswith(key + "_"):
            return str(value)
    return "not measured"


def conventions_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """One row per target with a fingerprint: the columns of :data:`CONVENTIONS` and the dtype measured in."""
    latest: dict[str, Run] = {}
    for run in runs:
        if run.report and isinstance(run.report.get("fingerprint"), dict):
            latest[run.target] = run
    body = []
    for target, run in latest.items():
        fingerprint = run.report["fingerprint"]
        body.append([target, str(fingerprint.get("dtype", "")),
                     *(_fingerprint_value(fingerprint, key) for key in CONVENTIONS.values())])
    return ["implementation", "measured in", *CONVENTIONS], body


def _not_produced(runs: list[Run]) -> list[Run]:
    return [run for run in runs if run.outcome in (TIMED_OUT, ERROR)]


def render_text(runs: list[Run], rows: list[Row], conventions: tuple[list[str], list[list[str]]], *,
                style: str = "text") -> str:
    """The matrix, the conventions table and the runs without a report, as text or Markdown."""
    head, body = matrix_rows(rows)
    c_head, c_body = conventions
    title = (lambda s: f"## {s}") if style == "markdown" else (lambda s: s)
    parts = [title("Properties"), "", render(head, body, style=style), "",
             title("Conventions"), "", render(c_head, c_body, style=style) if c_body else "(none measured)"]
    notes = [f"{run.target}: {run.outcome}" + (f" ({run.message})" if run.message else "")
             for run in runs if run.outcome != REPORT]
    if notes:
        parts += ["", title("Runs without a report"), ""] + [("- " if style == "markdown" else "  ") + n for n in notes]
    return "\n".join(parts)


def heatmap(rows: list[Row], path: Path) -> bool:
    """Draw the matrix to ``path`` (PNG) with a colour per cell value and a legend; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        return False
    head, body = matrix_rows(rows)
    props = head[2:]
    states = list(COLOURS)
    codes = [[states.index(c) if c in COLOURS else states.index("error") for c in line[2:]] for line in body]
    labels = [f"{line[0]} [{line[1]}]" for line in body]
    fig, ax = plt.subplots(figsize=(2.0 + 0.55 * max(len(props), 1), 1.6 + 0.32 * max(len(labels), 1)))
    if props and codes:
        ax.imshow(codes, cmap=ListedColormap(list(COLOURS.values())), vmin=-0.5, vmax=len(states) - 0.5,
                  aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(props)), props, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks([x - 0.5 for x in range(1, len(props))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(labels))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    present = [s for s in states if any(s == c for line in body for c in line[2:])] or ["pass"]
    ax.legend(handles=[Patch(facecolor=COLOURS[s], edgecolor="#555555", label=s) for s in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"bnref {__version__} oracle: properties per implementation and dtype", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def write_outputs(runs: list[Run], out: Path) -> tuple[list[Run], list[Row], list[str]]:
    """Merge ``runs`` and write conformance.{json,md,txt,png} into ``out``; returns the merge and notes.

    The conventions come from every run (the last fingerprint of each target), the matrix from the merge.
    """
    out.mkdir(parents=True, exist_ok=True)
    conventions = c_head, c_body = conventions_rows(runs)
    runs, rows = merge(runs)
    head, body = matrix_rows(rows)
    data = {"format": FORMAT, "bnref_version": __version__,
            "runs": [asdict(run) for run in runs],
            "matrix": [dict(zip(head, line)) for line in body],
            "conventions": [dict(zip(c_head, line)) for line in c_body]}
    (out / "conformance.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "conformance.md").write_text(render_text(runs, rows, conventions, style="markdown") + "\n", encoding="utf-8")
    (out / "conformance.txt").write_text(render_text(runs, rows, conventions) + "\n", encoding="utf-8")
    notes = []
    if not heatmap(rows, out / "conformance.png"):
        notes.append("matplotlib is not installed: no conformance.png (pip install matplotlib)")
    return runs, rows, notes


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    from bnref.adapters import ADAPTERS
    from bnref.oracle.properties import PROPERTIES

    p = argparse.ArgumentParser(
        prog="bnref conformance",
        description="Run `bnref check` over implementations, each in its own process with a time limit, and "
                    "collect the reports into one matrix (Markdown, text, PNG) and one JSON. "
                    "`bnref conformance merge FILE...` renders the same from reports made elsewhere.",
        epilog=f"TARGET: an adapter ({', '.join(ADAPTERS)}) or module:attr; default every adapter whose "
               f"framework is installed. Exit 0: every report produced; 1: a run timed out or gave no report; "
               f"2: usage error.")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--profile", default="quick", choices=(*profiles.PROFILES, *profiles.ALIASES),
                   help="the oracle's profile for every run (default quick)")
    p.add_argument("--dtype", action="append", choices=NAMES, default=[],
                   help="dtype to check (repeatable; default: each candidate's own)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit of one target's whole run (default {DEFAULT_TIMEOUT:g}; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    p.add_argument("--only", action="append", metavar="PROPERTY", default=[], choices=[q.name for q in PROPERTIES],
                   help="run only this property (repeatable; passed to bnref check)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bnref conformance merge",
        description="Render the conformance matrix from `bnref check --json` reports and conformance.json "
                    "files made elsewhere, merged by (target, dtype): a later file wins.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
    try:
        return parser.parse_args(argv), None
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return None, int(exc.code or 0)


def _finish(runs: list[Run], out: Path) -> int:
    runs, _, notes = write_outputs(runs, out)
    print((out / "conformance.txt").read_text(encoding="utf-8"), end="")
    for note in notes:
        print(f"bnref conformance: {note}", file=sys.stderr)
    print(f"\nwritten to {out}/: conformance.md, conformance.txt, conformance.json"
          + ("" if notes else ", conformance.png"), file=sys.stderr)
    return 1 if _not_produced(runs) else 0


def main(argv: list[str] | None = None) -> int:
    """``bnref conformance [TARGET ...]`` or ``bnref conformance merge FILE ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        args, code = _parse(_merge_parser(), argv[1:])
        if args is None:
            return code
        try:
            runs = [run for path in args.files for run in load_runs(path)]
        except ValueError as exc:
            print(f"bnref conformance merge: {exc}", file=sys.stderr)
            return 2
        return _finish(runs, Path(args.out))
    args, code = _parse(_parser(), argv)
    if args is None:
        return code
    from bnref.adapters import ADAPTERS

    unknown = [t for t in args.targets if t not in ADAPTERS and ":" not in t]
    if unknown:
        print(f"bnref conformance: unknown target(s) {', '.join(unknown)}: not an adapter "
              f"({', '.join(ADAPTERS)}) and not of the form module:attr", file=sys.stderr)
        return 2
    if args.timeout < 0:
        print("bnref conformance: --timeout must be >= 0", file=sys.stderr)
        return 2
    targets = list(dict.fromkeys(args.targets or ADAPTERS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_run = [t for t in targets if installed(t)]
    runs_by_target = {t: Run(t, NOT_INSTALLED, message=f"no module {', '.join(map(repr, missing_modules(t)))}",
                             dtypes=list(args.dtype))
                      for t in targets if t not in to_run}
    interrupted = False
    with Progress(len(to_run), "conformance", unit="run", enabled=not args.no_progress) as bar:
        for target in to_run:
            bar.update(0, target=f"{target} running")
            try:
                run = run_target(target, out, profile=args.profile, dtypes=args.dtype, timeout=args.timeout,
                                 seed=args.seed, only=args.only)
            except KeyboardInterrupt:  # the child is gone; what ran so far is still rendered
                interrupted = True
                break
            runs_by_target[target] = run
            bar.update(1, target=f"{target} {run.outcome} ({run.seconds:.0f} s)")
    runs = [runs_by_target.get(t) or Run(t, ERROR, message="not run: interrupted", dtypes=list(args.dtype))
            for t in targets]
    code = _finish(runs, out)
    if interrupted:
        print("bnref conformance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
