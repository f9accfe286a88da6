"""The two experiments, as presets, and the training loop that writes ``results.json``.

``seed`` -- the original post: 784 -> 10 x [FC 784 -> (BN) -> tanh -> dropout] -> FC 10, dropout 0.1
after the first hidden layer and 0.5 after the others, plain SGD lr 0.01, batch 100, NLL,
PyTorch's default weights U(+-1/sqrt(fan_in)) (the post's Theano-tutorial Glorot-uniform is
``init="glorot"``: with it BN learns ~3x more slowly, see docs/mnist.md); 10 epochs.

``paper`` -- Ioffe & Szegedy (2015), Figure 1: 784 -> 3 x [FC 100 -> (BN) -> sigmoid] -> FC 10, batch 60,
50 000 steps of plain SGD; records the test accuracy and the 15th/50th/85th percentiles of the input to
one sigmoid of the last hidden layer (over the test set) every ``eval_every`` steps.

Deterministic for a given seed: one ``SeedSequence`` spawns the streams for the initial weights, the
batch order and the dropout masks, so the runs with and without BN start from the same weights and see
the same batches.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bnref._progress import Progress
from bnref.mnist.data import Mnist
from bnref.mnist.layers import BatchNorm, Dropout, Linear, Network, Sigmoid, Tanh
from bnref.mnist.parallel import DataParallel, ShardedDropout, ShardedNLL, SyncBatchNorm

__all__ = ["Preset", "PRESETS", "build_network", "evaluate", "train", "run_experiment"]

ACTIVATIONS = {"tanh": Tanh, "sigmoid": Sigmoid}


@dataclass(frozen=True)
class Preset:
    """One experiment's network and schedule (``epochs`` or ``steps``; the other is None)."""

    name: str
    hidden: tuple[int, ...]
    activation: str
    dropout: tuple[float, ...]      # after each hidden layer
    lr: float
    batch_size: int
    init: str
    epochs: int | None = None
    steps: int | None = None
    eval_every: int | None = None   # steps between evaluations; None: once per epoch
    track_unit: bool = False        # record percentiles of one last-hidden-layer unit's input

    def with_schedule(self, *, epochs: int | None = None, steps: int | None = None) -> "Preset":
        """The preset trained for ``epochs`` or ``steps`` instead of its default schedule."""
        if epochs is not None and steps is not None:
            raise ValueError("give epochs or steps, not both")
        if epochs is not None:
            return replace(self, epochs=epochs, steps=None)
        if steps is not None:
            return replace(self, epochs=None, steps=steps)
        return self


PRESETS = {
    "seed": Preset(name="seed", hidden=(784,) * 10, activation="tanh", dropout=(0.1,) + (0.5,) * 9,
                   lr=0.01, batch_size=100, init="torch", epochs=10),
    # The paper gives no learning rate or scale for its "small random Gaussian" weights; N(0, 1)
    # weights and lr 0.5 make the sigmoid inputs drift as in its Fig. 1(b) without BN.
    "paper": Preset(name="paper", hidden=(100,) * 3, activation="sigmoid", dropout=(0.0,) * 3,
                    lr=0.5, batch_size=60, init="normal", steps=50_000, eval_every=500, track_unit=True),
}


def build_network(preset: Preset, *, bn: bool, rng: np.random.Generator, bn_eval: str = "running",
                  dropout_rng: np.random.Generator | None = None, dp: DataParallel | None = None) -> Network:
    """784 -> [Linear -> (BatchNorm) -> activation -> (Dropout)] per hidden width -> Linear 10.

    With ``dp`` (data-parallel training, :mod:`bnref.mnist.parallel`) batch norm, dropout and the loss
    are their synchronized versions, over this process's share of each global batch.
    """
    if preset.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {preset.activation!r}")
    dropout_rng = dropout_rng if dropout_rng is not None else rng
    layers = []
    fan_in = 784
    for width, p in zip(preset.hidden, preset.dropout, strict=True):
        layers.append(Linear(fan_in, width, rng, init=preset.init, bias=not bn))
        if bn:
            layers.append(BatchNorm(width, eval_stats=bn_eval) if dp is None
                          else SyncBatchNorm(width, dp, eval_stats=bn_eval))
        layers.append(ACTIVATIONS[preset.activation]())
        if p > 0:
            layers.append(Dropout(p, dropout_rng) if dp is None else ShardedDropout(p, dropout_rng, dp))
        fan_in = width
    layers.append(Linear(fan_in, 10, rng, init=preset.init))
    net = Network(layers)
    if dp is not None:
        net.loss = ShardedNLL(dp)
    return net


def _tracked_layer(net: Network) -> int:
    """Index of the last hidden activation layer (its input is what the paper's Fig. 1(b,c) shows)."""
    return max(i for i, layer in enumerate(net.layers) if isinstance(layer, tuple(ACTIVATIONS.values())))


def evaluate(net: Network, images: np.ndarray, labels: np.ndarray, batch_size: int,
             *, track: tuple[int, int] | None = None) -> dict:
    """Mean NLL and accuracy over a data set in evaluation mode.

    ``track=(layer_index, unit)`` also returns the 15th/50th/85th percentiles of that layer's input
    column ``unit`` over the data set.
    """
    total_loss, correct, tracked = 0.0, 0, []
    for start in range(0, len(images), batch_size):
        x, t = images[start:start + batch_size], labels[start:start + batch_size]
        for i, layer in enumerate(net.layers):
            if track is not None and i == track[0]:
                tracked.append(x[:, track[1]].astype(np.float64))
            x = layer.forward(x, training=False)
        total_loss += net.loss.forward(x, t) * len(t)
        correct += int((x.argmax(axis=1) == t).sum())
    result = {"test_loss": total_loss / len(images), "test_acc": correct / len(images)}
    if track is not None:
        result["unit_percentiles"] = np.percentile(np.concatenate(tracked), [15, 50, 85]).tolist()
    return result


def train(preset: Preset, data: Mnist, *, bn: bool, seed: int = 0, bn_eval: str = "running",
          progress: bool = True, on_record=None, comm=None) -> list[dict]:
    """Train one network; returns the evaluation records (the first at step 0, before training).

    Each record: ``step``, ``epoch`` (steps / steps per epoch), ``train_loss`` (mean training-mode loss
    of the batches since the previous record; None at step 0), ``test_loss``, ``test_acc``,
    ``seconds`` (training time since the previous record, evaluation excluded), ``elapsed`` (total
    training time), and ``unit_percentiles`` for presets that track a unit. ``on_record(records)`` is
    called after each record.

    With a communicator ``comm`` (:mod:`bnref.sync`) it trains data-parallel: this process takes its
    share of every global batch of ``preset.batch_size`` (see :mod:`bnref.mnist.parallel`); the losses
    are the global batch's, and every process returns the same records (each evaluates the whole test set).
    """
    if bn_eval not in ("running", "batch"):
        raise ValueError(f"bn_eval must be 'running' or 'batch'; got {bn_eval!r}")
    init_rng, order_rng, dropout_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    dp = None if comm is None else DataParallel(comm, preset.batch_size)
    net = build_network(preset, bn=bn, rng=init_rng, bn_eval=bn_eval, dropout_rng=dropout_rng, dp=dp)
    n_train, batch = len(data.train_images), preset.batch_size
    steps_per_epoch = n_train // batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({n_train} examples) is smaller than one batch ({batch})")
    total = preset.steps if preset.steps is not None else preset.epochs * steps_per_epoch
    eval_every = min(preset.eval_every or steps_per_epoch, total)
    # running statistics make the evaluation independent of the batch size: use big batches
    eval_batch = batch if bn and bn_eval == "batch" else 1000
    track = (_tracked_layer(net), 0) if preset.track_unit else None

    def record(step, losses, seconds, elapsed):
        rec = {"step": step, "epoch": step / steps_per_epoch,
               "train_loss": float(np.mean(losses)) if losses else None,
               "seconds": seconds, "elapsed": elapsed}
        rec.update(evaluate(net, data.test_images, data.test_labels, eval_batch, track=track))
        records.append(rec)
        if on_record is not None:
            on_record(records)
        return rec

    records: list[dict] = []
    record(0, [], 0.0, 0.0)
    losses, seconds, elapsed = [], 0.0, 0.0
    order = np.empty(0, dtype=np.int64)
    label = f"{preset.name} {'BN' if bn else 'no BN'}"
    with Progress(total, label, unit="step", enabled=progress) as bar:
        for step in range(1, total + 1):
            t0 = time.perf_counter()
            position = (step - 1) % steps_per_epoch
            if position == 0:
                order = order_rng.permutation(n_train)
            idx = order[position * batch:(position + 1) * batch]
            if dp is not None:
                idx = idx[dp.rows]
            loss = net.loss_and_grad(data.train_images[idx], data.train_labels[idx])
            if dp is not None:
                loss = dp.mean_loss(loss, len(idx))
                dp.allreduce_gradients(net)
            net.sgd_step(preset.lr)
            dt = time.perf_counter() - t0
            seconds += dt
            elapsed += dt
            losses.append(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{label}: the training loss became {loss} at step {step}")
            if step % eval_every == 0 or step == total:
                rec = record(step, losses, seconds, elapsed)
                losses, seconds = [], 0.0
                bar.update(1, loss=rec["train_loss"], test_acc=rec["test_acc"])
            else:
                bar.update(1, loss=loss)
    return records


def versions() -> dict:
    import numba

    import bnref

    return {"bnref": bnref.__version__, "numpy": np.__version__, "numba": numba.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count()}


def run_experiment(preset: Preset, data: Mnist, out_dir, *, bn_modes=(True, False), seed: int = 0,
                   bn_eval: str = "running", limit: int | None = None, progress: bool = True, comm=None) -> dict:
    """Train with and/or without BN and write ``out_dir/results.json`` after every record.

    With ``comm``, data-parallel over its processes (see :func:`train`); process 0 writes the file.
    """
    out = Path(out_dir)
    writer = comm is None or comm.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    results = {"preset": preset.name,
               "config": {**asdict(preset), "seed": seed, "bn_eval": bn_eval, "limit": limit,
                          "n_train": len(data.train_images), "n_test": len(data.test_images),
                          "processes": 1 if comm is None else comm.size},
               "versions": versions(), "runs": {}}

    def save(key, records):
        results["runs"][key] = records
        if not writer:
            return
        tmp = out / "results.json.partial"
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, out / "results.json")

    for bn in bn_modes:
        key = "bn" if bn else "no_bn"
        train(preset, data, bn=bn, seed=seed, bn_eval=bn_eval, progress=progress and writer,
              on_record=lambda records, key=key: save(key, records), comm=comm)
    return results

