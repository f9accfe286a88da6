"""Benchmark: seconds per epoch of the seed network, bnref (NumPy + bnref kernels) against PyTorch CPU.

    python -m bnref.mnist.bench [--threads N] [--steps S] [--repeats R] [--bn on|off|both] [--json FILE]
    bnref mnist bench ...

The same network (784 -> 10 x [Linear 784 -> BatchNorm -> tanh -> dropout] -> Linear 10, batch 100,
SGD lr 0.01, float32) is trained in one process by both implementations from the same initial
weights on the same batches, with the same thread count for BLAS, OpenMP, Numba and PyTorch. The
timing covers whole training steps (batch gather, forward, backward, SGD update), measured in
``repeats`` blocks of ``steps`` steps that alternate between the two implementations after a warm-up;
the median step time times 600 (steps per MNIST epoch) is reported as seconds per epoch. Synthetic
data of MNIST's shape: the time of a step does not depend on the pixel values.

Thread counts of BLAS libraries are fixed when they load, so the process re-executes itself once with
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``NUMBA_NUM_THREADS`` set to
``--threads``, and with short spins unless the user chose otherwise (:func:`bnref._threads.reexec`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

STEPS_PER_EPOCH = 600  # 60 000 training images / batch 100


def _parser():
    p = argparse.ArgumentParser(prog="bnref mnist bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both  [all cores]")
    p.add_argument("--steps", type=int, default=60, help="steps per timed block  [60]")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per implementation  [3]")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first  [5]")
    p.add_argument("--bn", choices=["on", "off", "both"], default="on", help="network with and/or without BN  [on]")
    p.add_argument("--json", help="also write the results to this file")
    return p


class _BnrefRunner:
    def __init__(self, net, lr):
        self.net, self.lr = net, lr

    def step(self, images, labels, idx):
        loss = self.net.loss_and_grad(images[idx], labels[idx])
        self.net.sgd_step(self.lr)
        return loss


class _TorchRunner:
    def __init__(self, net, lr):
        import torch
        from torch import nn

        from bnref.mnist.layers import BatchNorm, Dropout, Linear, Tanh

        modules = []
        for layer in net.layers:  # mirror the bnref network, copying its initial weights
            if isinstance(layer, Linear):
                fan_in, fan_out = layer.weight.shape
                lin = nn.Linear(fan_in, fan_out, bias=layer.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(layer.weight.T.copy()))
                    if layer.bias is not None:
                        lin.bias.copy_(torch.from_numpy(layer.bias))
                modules.append(lin)
            elif isinstance(layer, BatchNorm):
                modules.append(nn.BatchNorm1d(len(layer.gamma), eps=layer.eps, momentum=layer.momentum))
            elif isinstance(layer, Tanh):
                modules.append(nn.Tanh())
            elif isinstance(layer, Dropout):
                modules.append(nn.Dropout(layer.p))
            else:  # pragma: no cover - the seed network has no other layers
                raise TypeError(f"no PyTorch mirror for {type(layer).__name__}")
        self.torch = torch
        self.model = nn.Sequential(*modules).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)

    def step(self, images, labels, idx):
        torch = self.torch
        x = torch.from_numpy(images[idx])
        t = torch.from_numpy(labels[idx])
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.nll_loss(torch.log_softmax(self.model(x), dim=1), t)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _time_block(runner, images, labels, batches) -> float:
    start = time.perf_counter()
    for idx in batches:
        runner.step(images, labels, idx)
    return (time.perf_counter() - start) / len(batches)


def run(threads: int, steps: int, repeats: int, warmup: int, bn: bool) -> dict:
    import numba
    import numpy as np
    import torch

    from bnref._threads import limit_threads
    from bnref.mnist.train import PRESETS, build_network

    preset = PRESETS["seed"]
    with limit_threads(threads):
        rng = np.random.default_rng(0)
        images = rng.random((60_000, 784), dtype=np.float32)
        labels = rng.integers(0, 10, 60_000)
        runners = {"bnref": _BnrefRunner(build_network(preset, bn=bn, rng=rng), preset.lr)}
        runners["torch"] = _TorchRunner(runners["bnref"].net, preset.lr)
        order = rng.permutation(60_000)

        def batches(block):
            start = (block * steps * preset.batch_size) % 60_000
            return [order[(start + i * preset.batch_size) % 60_000:][:preset.batch_size] for i in range(steps)]

        for runner in runners.values():
            _time_block(runner, images, labels, batches(0)[:warmup])
        times = {name: [] for name in runners}
        for block in range(repeats):
            for name, runner in runners.items():  # alternate, so drifting machine load hits both alike
                times[name].append(_time_block(runner, images, labels, batches(block)))
        per_epoch = {name: STEPS_PER_EPOCH * statistics.median(ts) for name, ts in times.items()}
        return {"bn": bn, "threads": threads, "steps": steps, "repeats": repeats,
                "seconds_per_step": times, "seconds_per_epoch": per_epoch,
                "ratio_bnref_over_torch": per_epoch["bnref"] / per_epoch["torch"],
                "versions": {"torch": torch.__version__, "numpy": np.__version__, "numba": numba.__version__,
                             "numba_threading_layer": _threading_layer(numba)}}


def _threading_layer(numba) -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("threads", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    from bnref._threads import reexec

    status = reexec(["mnist", "bench", *argv], threads=args.threads)  # on POSIX, returns only when all is set
    if status is not None:
        return status
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        print("bnref mnist bench: PyTorch is needed (pip install torch==2.13.0 --index-url <CPU wheels>)",
              file=sys.stderr)
        return 2
    from bnref._table import render

    results = []
    for bn in {"on": (True,), "off": (False,), "both": (True, False)}[args.bn]:
        r = run(args.threads, args.steps, args.repeats, args.warmup, bn)
        results.append(r)
        print(f"seed network {'with' if bn else 'without'} BN, {args.threads} thread(s), batch 100, "
              f"median of {args.repeats} x {args.steps} steps:")
        print(render(None, [(name, f"{sec:.1f} s/epoch", f"({1000 * sec / STEPS_PER_EPOCH:.1f} ms/step)")
                            for name, sec in r["seconds_per_epoch"].items()], align="<><", indent="  "))
        print(f"  ratio bnref / torch = {r['ratio_bnref_over_torch']:.2f}  "
              f"(numba threading layer: {r['versions']['numba_threading_layer']})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
