"""PNG figures from a ``results.json`` written by :func:`bnref.mnist.train.run_experiment`.

``curves.png``: loss (training, dashed; test, solid) and test accuracy against epochs (or steps),
BN and no BN on the same axes, as in the seed post. For presets that track a unit (``paper``) also
``fig1.png``: the paper's Figure 1 -- (a) test accuracy against steps, (b, c) the 15th/50th/85th
percentiles of the input to one last-hidden-layer sigmoid, without and with BN.

matplotlib is imported here only, with the non-interactive Agg backend.
"""
from __future__ import annotations

import json
from pathlib import Path

from bnref._table import render

__all__ = ["plot_results", "merge", "table"]

_STYLE = {"bn": {"color": "C0", "label": "with BN"}, "no_bn": {"color": "C3", "label": "without BN"}}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(results: dict, records: list[dict]) -> tuple[list[float], str]:
    if results["config"].get("epochs") is not None:
        return [r["epoch"] for r in records], "epoch"
    return [r["step"] for r in records], "step"


def _title(results: dict) -> str:
    c = results["config"]
    return (f"MNIST, preset {results['preset']}: {len(c['hidden'])} x {c['hidden'][0]} {c['activation']}, "
            f"SGD lr {c['lr']}, batch {c['batch_size']}, init {c['init']}, seed {c['seed']}")


def _curves(plt, results: dict, path: Path) -> Path:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, records in results["runs"].items():
        style = _STYLE[key]
        x, xlabel = _x(results, records)
        trained = [(xi, r["train_loss"]) for xi, r in zip(x, records) if r["train_loss"] is not None]
        if trained:
            ax_loss.plot(*zip(*trained), "--", color=style["color"], label=f"{style['label']}, training")
        ax_loss.plot(x, [r["test_loss"] for r in records], "-", color=style["color"], label=f"{style['label']}, test")
        ax_acc.plot(x, [100 * r["test_acc"] for r in records], "-o", ms=3, color=style["color"], label=style["label"])
    for ax, ylabel in ((ax_loss, "negative log-likelihood"), (ax_acc, "test accuracy (%)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 100)
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fig1(plt, results: dict, path: Path) -> Path:
    runs = results["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, records in runs.items():
        axes[0].plot([r["step"] for r in records], [r["test_acc"] for r in records], color=_STYLE[key]["color"],
                     label=_STYLE[key]["label"])
    later = [r["test_acc"] for records in runs.values() for r in records[2:]]
    if later and min(later) >= 0.8:  # zoom in as the paper does, once past the first evaluations
        axes[0].set_ylim(0.8, 1.0)
    axes[0].set_title("(a) test accuracy")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    for ax, key, title in ((axes[1], "no_bn", "(b) without BN"), (axes[2], "bn", "(c) with BN")):
        records = runs.get(key)
        ax.set_title(f"{title}: sigmoid input, 15/50/85th pct")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not records:
            continue
        steps = [r["step"] for r in records]
        for i, ls in enumerate(("--", "-", "--")):
            ax.plot(steps, [r["unit_percentiles"][i] for r in records], ls, color=_STYLE[key]["color"])
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def table(results: dict, every: int = 1) -> str:
    """A Markdown table of test accuracy (and seconds of training) per record, runs side by side."""
    runs = results["runs"]
    keys = [k for k in ("bn", "no_bn") if k in runs]
    by_epoch = results["config"].get("epochs") is not None
    header = ["epoch" if by_epoch else "step"]
    for k in keys:
        header += [f"test acc. {_STYLE[k]['label']}"] + ([f"s/epoch {_STYLE[k]['label']}"] if by_epoch else [])
    rows = []
    n = max(len(runs[k]) for k in keys)
    for i in range(0, n, every):
        first = next(runs[k][i] for k in keys if i < len(runs[k]))
        row = [f"{first['epoch']:g}" if by_epoch else first["step"]]
        for k in keys:
            r = runs[k][i] if i < len(runs[k]) else None
            row.append(f"{100 * r['test_acc']:.2f} %" if r else "--")
            if by_epoch:
                row.append(f"{r['seconds']:.0f}" if r and r["step"] else "")
        rows.append(row)
    return render(header, rows, style="markdown")


def merge(results_list: list[dict]) -> dict:
    """One results dict holding the runs of several (same preset and config but for ``bn``)."""
    merged = dict(results_list[0], runs=dict(results_list[0]["runs"]))
    for other in results_list[1:]:
        if other["preset"] != merged["preset"]:
            raise ValueError(f"cannot draw preset {other['preset']!r} with preset {merged['preset']!r}")
        merged["runs"].update(other["runs"])
    return merged


def plot_results(results_files, out_dir) -> list[Path]:
    """Draw the figures of one or more ``results.json`` into ``out_dir``; returns the paths written."""
    if isinstance(results_files, (str, Path)):
        results_files = [results_files]
    results = merge([json.loads(Path(f).read_text()) for f in results_files])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    (out_dir / "summary.md").write_text(table(results) + "\n")
    written = [out_dir / "summary.md", _curves(plt, results, out_dir / "curves.png")]
    if any(records and "unit_percentiles" in records[0] for records in results["runs"].values()):
        written.append(_fig1(plt, results, out_dir / "fig1.png"))
    return written
