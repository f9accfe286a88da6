"""The oracle's report: a terminal table, the fingerprint, failures with their minimal examples, JSON."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from bnref._table import render
from bnref.oracle.fingerprint import Fingerprint

__all__ = ["PropertyResult", "Report"]

PASS, FAIL, NOT_PROVIDED, SKIPPED, NOT_RUN = "pass", "FAIL", "not provided", "skipped", "not run"


@dataclass
class PropertyResult:
    """The outcome of one property in one dtype."""

    property: str
    dtype: str
    status: str                      # pass / FAIL / not provided / skipped / not run (the run was stopped)
    summary: str = ""
    examples: int = 0
    worst_ratio: float = 0.0         # max over examples of error / tolerance (<= 1 passes)
    worst: str = ""                  # the comparison behind worst_ratio
    failures: list[str] = field(default_factory=list)   # the failing comparisons of the minimal example
    case: str = ""                   # BNCase.describe() of the minimal example
    replay: str = ""                 # code that replays it
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class Report:
    """Everything ``bnref check`` found; ``ok`` when no correctness property failed."""

    target: str
    candidate: str
    version: str
    channel_axis: int
    dtypes: list[str]
    profile: str
    seed: int
    fingerprint: Fingerprint | None
    results: list[PropertyResult] = field(default_factory=list)
    seconds: float = 0.0
    bnref_version: str = ""
    stopped: str = ""                # why the run ended early ("" when it ran to the end)

    @property
    def ok(self) -> bool:
        """No correctness property failed, the fingerprint's probes found no defect, and every one ran."""
        return not self.stopped and not any(r.failed for r in self.results) and not self.findings

    @property
    def findings(self) -> list[str]:
        """Defects the fingerprint's probes saw (NaN/inf from finite input)."""
        return list(self.fingerprint.findings) if self.fingerprint is not None else []

    @property
    def failed(self) -> list[PropertyResult]:
        return [r for r in self.results if r.failed]

    def result(self, prop: str, dtype: str) -> PropertyResult:
        return next(r for r in self.results if r.property == prop and r.dtype == dtype)

    # ----------------------------------------------------------------- rendering

    def header(self) -> str:
        layout = "channels-first (channel_axis=1)" if self.channel_axis == 1 else "channels-last (channel_axis=-1)"
        return (f"bnref {self.bnref_version} oracle: {self.target} ({self.candidate}, version {self.version})\n"
                f"layout {layout}; dtypes {', '.join(self.dtypes)}; profile {self.profile}; seed {self.seed}")

    def table(self) -> str:
        rows = []
        for r in self.results:
            ratio = "" if r.status in (NOT_PROVIDED, SKIPPED, NOT_RUN) else _ratio(r.worst_ratio)
            rows.append((r.property, r.dtype, r.status, r.examples or "", ratio, r.summary))
        return render(("property", "dtype", "result", "examples", "worst err/tol", "what"), rows)

    def conventions(self) -> str:
        if self.fingerprint is None:
            return "conventions: not measured"
        lines = [f"conventions (measured in {self.fingerprint.dtype}):",
                 render(None, self.fingerprint.rows(), indent="  ")]
        lines += [f"  note: {n}" for n in self.fingerprint.notes]
        lines += [f"  FAIL (fingerprint): {f}" for f in self.fingerprint.findings]
        return "\n".join(lines)

    def failure_details(self) -> str:
        blocks = []
        for r in self.failed:
            lines = [f"FAIL {r.property} [{r.dtype}]: {r.summary}"]
            lines += [f"  {f}" for f in r.failures]
            if r.case:
                lines.append(f"  minimal example: {r.case}")
            if r.replay:
                lines.append("  replay:")
                lines += [f"    {line}" for line in r.replay.splitlines()]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def verdict(self) -> str:
        n_fail = len(self.failed)
        n_run = sum(r.status in (PASS, FAIL) for r in self.results)
        if self.stopped:
            n_left = sum(r.status == NOT_RUN for r in self.results)
            return (f"STOPPED: {self.stopped}; {n_fail} of {n_run} property checks failed, {n_left} not run "
                    f"({self.seconds:.1f} s)")
        found = f"; the fingerprint found {len(self.findings)} defect(s)" if self.findings else ""
        if n_fail or found:
            return f"{n_fail} of {n_run} property checks FAILED{found} ({self.seconds:.1f} s)"
        return f"all {n_run} property checks passed ({self.seconds:.1f} s)"

    def render(self) -> str:
        parts = [self.header(), "", self.table(), "", self.conventions()]
        if self.failed:
            parts += ["", self.failure_details()]
        parts += ["", self.verdict()]
        return "\n".join(parts)

    def to_json(self) -> str:
        data = asdict(self)
        data["fingerprint"] = None if self.fingerprint is None else self.fingerprint.to_dict()
        data["ok"] = self.ok
        return json.dumps(_finite(data), indent=2, default=str)


def _ratio(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"



def _finite(value):
    """JSON has no inf/NaN: write them as the strings "inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
