"""Every failure of the published conformance run, with the standalone reproduction that confirms it.

One record per finding: the implementations and the (property, dtype) cells it explains, whether it is
a defect of the framework or a convention of precision (what the framework computes in the dtype it is
asked for, which the oracle's tolerance, built for float32 statistics, does not take), what is wrong,
the reproduction script beside this file (NumPy and the framework, no bnref) and the public upstream
issue, or "not found". ``tests/test_conformance_page.py`` checks that every FAIL cell of
``docs/data/conformance.json`` is explained here, that every record explains at least one, that each
script exists and is run by ``tests/test_repro.py``, and that the findings table of
``docs/conformance.md`` is :func:`markdown_table` of that run: ``python docs/repro/findings.py``
prints it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFECT, PRECISION = "defect", "precision convention"
F32, F64, F16, BF16 = "float32", "float64", "float16", "bfloat16"


@dataclass(frozen=True)
class Finding:
    title: str
    targets: tuple[str, ...]
    cells: tuple[tuple[str, tuple[str, ...]], ...]     # (property, dtypes) the finding explains
    kind: str
    repro: str                                         # a script in docs/repro/
    upstream: str                                      # a URL, or "not found" with the nearest one
    anchor: str                                        # its section of docs/findings.md

    def explains(self, target: str, prop: str, dtype: str) -> bool:
        return target in self.targets and any(p == prop and dtype in dtypes for p, dtypes in self.cells)


FINDINGS: tuple[Finding, ...] = (
    Finding("batch mean rounded to the half type (parameters in x's dtype)", ("torch", "torch-channels-last"),
            (("forward", (F16, BF16)), ("backward", (F16, BF16)), ("shift_invariance", (F16, BF16)),
             ("eps_honoured", (F16,)), ("running_stats", (BF16,)), ("double_backward", (BF16,))),
            PRECISION, "torch_half_rounded_mean.py", "not found; the same observation: NVIDIA/apex#144", "torch"),
    Finding("float16 double backward overflows: (var + eps)^(-3/2) in float16",
            ("torch", "torch-channels-last", "torch-mixed"), (("double_backward", (F16,)),),
            DEFECT, "torch_fp16_double_backward_overflow.py", "not found; the same defect in Chainer: chainer/chainer#6251", "torch"),
    Finding("mixed-precision double backward computed in x's half dtype", ("torch-mixed",),
            (("double_backward", (F16, BF16)),),
            PRECISION, "torch_mixed_double_backward_precision.py", "not found", "torch"),
    Finding("one-pass variance max(0, E[x²] − E[x]²) (use_fast_variance=True, the default)",
            ("flax", "flax-nnx", "flax-sync"),
            (("shift_invariance", (F32, F64)), ("forward", (F32, F64)), ("running_stats", (F32, F64)),
             ("running_stats_steps", (F32, F64))),
            DEFECT, "flax_fast_variance_forward.py", "google/flax#1491", "flax-fast-variance"),
    Finding("cross-replica statistics: the unweighted mean of per-device masked means", ("flax-sync",),
            (("sharded_uneven", (F32, F64)), ("sharded_degenerate", (F32, F64))),
            DEFECT, "flax_sync_uneven_shards.py", "google/flax#2417 (closed)", "flax-sync"),
    Finding("eps hard-coded as 1e-5", ("seed",),
            (("forward", (F32, F64)), ("backward", (F32, F64)), ("double_backward", (F32, F64)),
             ("scale_invariance", (F32, F64)), ("constant_channel", (F32, F64)), ("eps_honoured", (F32, F64))),
            DEFECT, "seed_post_eps.py", "none: a blog post, not a maintained library", "seed"),
    Finding("no running averages: test batches normalized with their own statistics", ("seed",),
            (("forward_eval", (F32, F64)), ("forward_eval_large_var", (F32, F64))),
            DEFECT, "seed_post_eps.py", "none: a blog post, not a maintained library", "seed"),
    Finding("one-pass variance E[x²] − E[x]², unclamped (NaN in float32)", ("haiku",),
            (("shift_invariance", (F32, F64)), ("forward", (F32, F64)), ("running_stats", (F32, F64)),
             ("running_stats_steps", (F32, F64)), ("fingerprint", (F32,))),
            DEFECT, "haiku_one_pass_variance.py", "not found; the same cancellation in Flax: google/flax#1491", "haiku"),
    Finding("ops.moments one-pass and unclamped on the torch backend (NaN)", ("keras-torch",),
            (("forward", (F32, F64)), ("running_stats", (F32, F64)), ("shift_invariance", (F32, F64)),
             ("fingerprint", (F32,))),
            DEFECT, "keras_torch_one_pass_variance.py",
            "not found; fixed for TensorFlow and JAX only by keras-team/keras#18795", "keras-torch"),
    Finding("double backward of tf.nn.moments: the variance around stop_gradient(mean)",
            ("tensorflow", "keras-tensorflow", "tf-keras-nonfused"), (("double_backward", (F32, F64)),),
            DEFECT, "tf_moments_double_backward.py", "not found; the stop_gradient note: tensorflow/tensorflow#19609", "tf-moments"),
    Finding("double backward: the variance around a detached mean", ("tinygrad",),
            (("double_backward", (F32, F64, F16, BF16)),),
            DEFECT, "tinygrad_double_backward_detached_mean.py", "not found", "tinygrad"),
    Finding("half statistics: the mean rounded to x's dtype, every step in the half type", ("tinygrad",),
            (("forward", (F16, BF16)), ("backward", (F16, BF16)), ("shift_invariance", (F16, BF16)),
             ("eps_honoured", (F16, BF16)), ("running_stats", (F16, BF16)), ("running_stats_steps", (F16, BF16)),
             ("constant_channel", (F16, BF16))),
            PRECISION, "tinygrad_half_statistics.py", "by design: tinygrad/tinygrad#4143, tinygrad/tinygrad#5170", "tinygrad"),
    Finding("a half-precision layer computes every step in the half type", ("mlx",),
            (("forward", (F16, BF16)), ("backward", (F16, BF16)), ("shift_invariance", (F16, BF16)),
             ("constant_channel", (F16, BF16)), ("double_backward", (BF16,)), ("running_stats", (F16, BF16)),
             ("running_stats_steps", (F16, BF16)), ("forward_eval", (F16, BF16)),
             ("forward_eval_large_var", (F16, BF16)), ("eps_honoured", (F16, BF16))),
            PRECISION, "mlx_half_statistics.py", "not found; on half accumulation: ml-explore/mlx#488", "mlx"),
    Finding("float16 backward overflows: the rsqrt VJP's v^(-3/2) in float16", ("mlx",),
            (("double_backward", (F16,)), ("sum_dx_zero", (F16,)), ("backward", (F16,))),
            DEFECT, "mlx_fp16_backward_overflow.py", "not found; the zero-cotangent case: ml-explore/mlx#3668", "mlx"),
)

def upstream_links(text: str) -> str:
    """``owner/repo#N`` references as links (GitHub redirects /issues/N to a pull request)."""
    return re.sub(r"\b([\w.-]+/[\w.-]+)#(\d+)", r"[\1#\2](https://github.com/\1/issues/\2)", text)


def explained_by(fails: set[tuple[str, str, str]]) -> dict[Finding, list[tuple[str, str, str]]]:
    """finding -> the FAIL cells (target, property, dtype) of ``fails`` it explains."""
    return {f: sorted(cell for cell in fails if f.explains(*cell)) for f in FINDINGS}


def _cells(cells: list[tuple[str, str, str]]) -> str:
    """``target``: `property` dtypes; ... grouped by target and property."""
    grouped: dict[str, dict[str, list[str]]] = {}
    for target, prop, dtype in cells:
        grouped.setdefault(target, {}).setdefault(prop, []).append(dtype)
    return "; ".join(f"`{target}` " + ", ".join(f"{prop} ({' '.join(dtypes)})" for prop, dtypes in props.items())
                     for target, props in grouped.items())


def markdown_table(fails: set[tuple[str, str, str]]) -> str:
    """The findings table of docs/conformance.md for the FAIL cells ``fails`` of a run."""
    lines = ["| finding | FAIL cells it explains | kind | reproduction | upstream |", "|---|---|---|---|---|"]
    for f, cells in explained_by(fails).items():
        if cells:
            lines.append(f"| [{f.title}](findings.md#{f.anchor}) | {_cells(cells)} | {f.kind} | "
                         f"[`{f.repro}`](repro/{f.repro}) | {upstream_links(f.upstream)} |")
    return "\n".join(lines)


def fail_cells(path: str) -> set[tuple[str, str, str]]:
    """The (target, property, dtype) cells that are not pass / not provided in a conformance JSON file."""
    from bnref import conformance

    _, rows = conformance.merge(conformance.load_runs(path))
    return {(row.target, prop, row.dtype) for row in rows for prop, status in row.cells.items()
            if status not in ("pass", "not provided")}


if __name__ == "__main__":
    import sys

    print(markdown_table(fail_cells(sys.argv[1] if len(sys.argv) > 1 else "docs/data/conformance.json")))
