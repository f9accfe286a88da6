"""The standalone reproductions of docs/repro/ assert what the frameworks do today.

Each test pins the behaviour a reproduction documents, so that an upstream release that
changes it (a fix) fails here and the page is updated. Skipped when the framework is missing.
"""
import importlib.util
import os
import shutil

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPRO = Path(__file__).resolve().parents[1] / "docs" / "repro"


def load(name):
    """The module docs/repro/<name>.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(f"repro_{name}", REPRO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_torch_fp16_double_backward_overflows(torch):
    """float16 (with float16 or float32 parameters): inf/NaN once invstd^3 > 65504, i.e. std 0.02,
    though the float64 result is below 2000; std 0.03 (invstd^3 = 3.6e4) and bfloat16 stay finite."""
    repro = load("torch_fp16_double_backward_overflow")
    for param_dtype in (None, torch.float32):
        exact, finite = repro.run(0.02, torch.float16, param_dtype)
        assert exact < repro.FLOAT16_MAX / 10 and not finite
        exact, finite = repro.run(0.0, torch.float16, param_dtype)  # a constant channel: inf * 0
        assert exact < repro.FLOAT16_MAX / 10 and not finite
        assert repro.run(0.03, torch.float16, param_dtype)[1]
    assert repro.run(0.02, torch.bfloat16)[1] and repro.run(0.0, torch.bfloat16)[1]


def test_torch_half_parameters_round_the_batch_statistics(torch):
    """Same-dtype parameters: y follows the rounded-mean model (bfloat16 2D and channels-last: the
    variance around the rounded mean too), 0.5 or more from the exact y; float32 parameters: exact."""
    repro = load("torch_half_rounded_mean")
    expected_model = {(torch.float16, "2d"): "rounded mean", (torch.float16, "3d"): "rounded mean",
                      (torch.float16, "channels_last"): "rounded mean",
                      (torch.bfloat16, "2d"): "rounded mean, var around it",
                      (torch.bfloat16, "3d"): "rounded mean",
                      (torch.bfloat16, "channels_last"): "rounded mean, var around it"}
    for (dtype, layout), model in expected_model.items():
        y = repro.results(dtype, layout)
        u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
        np.testing.assert_allclose(y["same dtype"], y[model], rtol=2 * u, atol=2 * u, err_msg=f"{dtype} {layout}")
        assert np.max(np.abs(y["same dtype"] - y["exact"])) > 0.5
        np.testing.assert_allclose(y["float32 parameters"], y["exact"], rtol=2 * u, atol=2 * u)


def test_flax_fast_variance_double_backward_on_a_constant_channel():
    """Under jit, use_fast_variance=True: gdy on a constant channel of 121s off by more than half its
    size in float32 and in bfloat16 mixed precision; the two-pass variance: within the output's rounding."""
    pytest.importorskip("flax")
    repro = load("flax_fast_variance_double_backward")
    configs = repro.CONFIGS
    assert repro.worst_gdy_error(*configs["float32, fast variance"]) > 0.5
    assert repro.worst_gdy_error(*configs["bfloat16 x, float32 params, fast variance"]) > 0.5
    assert repro.worst_gdy_error(*configs["float32, two-pass"]) < 1e-5
    assert repro.worst_gdy_error(*configs["bfloat16 x, float32 params, two-pass"]) < 2 * 2.0 ** -8


def test_torch_half_parameters_backward_uses_the_rounded_mean(torch):
    """float16 parameters: dx follows the rounded-mean model, 100 times the exact dx (near 0 for m = 2);
    float32 parameters: the exact dx."""
    dx = load("torch_half_rounded_mean").dx_results()
    u = 2.0 ** -11
    scale = float(np.max(np.abs(dx["rounded mean"])))
    assert scale > 1.0 and float(np.max(np.abs(dx["exact"]))) < scale / 100
    np.testing.assert_allclose(dx["same dtype"], dx["rounded mean"], atol=8 * u * scale)
    np.testing.assert_allclose(dx["float32 parameters"], dx["exact"], atol=8 * u * scale)


def test_mlx_fp16_backward_overflows():
    """float16 dx is inf/NaN once (var + eps)^-1.5 > 65504 (std 0.02, a constant channel) though the float32
    dx is below 500; std 0.03 and bfloat16 stay finite."""
    pytest.importorskip("mlx.core")
    repro = load("mlx_fp16_backward_overflow")
    for std in (0.02, 0.0):
        reference, finite = repro.run(std, "float16")
        assert reference < 500 and not finite
        assert repro.run(std, "bfloat16")[1]
    assert repro.run(0.03, "float16")[1]


def test_mlx_half_layer_computes_in_the_half_type():
    """A float16/bfloat16 layer: a constant channel is not centred (|y| > 0.1 for exact 0; three bfloat16 346s:
    mean 348, variance 4), two adjacent values
    give y off by more than 0.4 and dx over 5 times the float32 layer's, eval y off by more than one rounding;
    the float32 layer on the same inputs: exact to float32, its eval rounded to the half type within one rounding."""
    pytest.importorskip("mlx.core")
    repro = load("mlx_half_statistics")
    for dtype in repro.DTYPES:
        value, mean, y = repro.constant_channel(dtype)
        assert mean != value and np.min(np.abs(y)) > 0.1
        r = repro.adjacent_values(dtype)
        np.testing.assert_allclose(r["y float32 layer"], r["y exact"], atol=1e-5)
        assert np.max(np.abs(r["y"] - r["y exact"])) > 0.4
        assert np.max(np.abs(r["dx"])) > 5 * np.max(np.abs(r["dx float32 layer"]))
        errors = repro.eval_ulps(dtype)
        assert errors[f"layer in {dtype}"] > 1.5 and errors["float32 layer"] <= 1
    got, exact = repro.running_var("bfloat16")
    assert abs(got - exact) > 0.05
    assert repro.constant_statistics("bfloat16") == (348.0, 4.0)


#: the child process of the Keras 3 part: the repro's relative gx error of Keras' layer on TensorFlow
KERAS_TENSORFLOW_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("repro", sys.argv[1])
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)
print(repro.relative_error(repro.with_keras))
"""


def test_tf_nn_moments_double_backward_is_wrong():
    """gx from nested tapes: tf.nn.moments (and tf_keras' non-fused layer, and Keras 3 on TensorFlow in a
    process of its own) off by more than a third of gx's size in float64; the variance written out: right."""
    pytest.importorskip("tensorflow")
    import os
    import subprocess
    import sys

    repro = load("tf_moments_double_backward")
    assert repro.relative_error(repro.with_the_variance_written_out) < 1e-7
    assert repro.relative_error(repro.with_tf_nn_moments) > 0.3
    if importlib.util.find_spec("tf_keras") is not None:
        assert repro.relative_error(repro.with_tf_keras) > 0.3
    if importlib.util.find_spec("keras") is not None:
        done = subprocess.run([sys.executable, "-c", KERAS_TENSORFLOW_CHILD, str(REPRO / "tf_moments_double_backward.py")],
                              env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert float(done.stdout.strip().splitlines()[-1]) > 0.3


@pytest.fixture(scope="module")
def tinygrad():
    # tinygrad reads DEV when first imported; its CPU device compiles every kernel with clang
    os.environ.setdefault("DEV", "CPU")
    tinygrad = pytest.importorskip("tinygrad")
    if shutil.which(os.environ.get("CC", "clang")) is None:
        pytest.skip("tinygrad's CPU device needs clang (or the compiler CC names)")
    return tinygrad


def test_tinygrad_double_backward_misses_the_detached_mean_term(tinygrad):
    """nn.BatchNorm's gx is off by more than 1 % of its scale, and adding the term the detached mean
    drops (-(2/m^2) dL/dvar sum(ddx)) makes it agree with finite differences, as the same ops without
    the detach do."""
    repro = load("tinygrad_double_backward_detached_mean")
    gx = repro.results()
    exact = gx["finite differences"]
    scale = float(np.max(np.abs(exact)))
    assert np.max(np.abs(gx["nn.BatchNorm"] - exact)) > 0.01 * scale
    np.testing.assert_allclose(gx["nn.BatchNorm"] + gx["missing term"], exact, atol=1e-6 * scale)
    np.testing.assert_allclose(gx["without detach"], exact, atol=1e-6 * scale)


def test_tinygrad_half_batch_statistics_are_rounded_to_float16(tinygrad):
    """float16 x, float16 or float32 weight: y and dx follow the rounded-mean model (variance around the
    rounded mean), 0.3 or more from the exact ones; x cast to float32 first: the exact y and dx; bfloat16
    (where this clang compiles it): y follows the model too."""
    results = load("tinygrad_half_statistics").results()
    u = 2.0 ** -11
    exact_y, exact_dx = results["exact"]
    model_y, model_dx = results["rounded-mean model"]
    for name in ("float16 weight", "float32 weight"):
        y, dx = results[name]
        np.testing.assert_allclose(y, model_y, atol=4 * u * np.max(np.abs(model_y)), err_msg=name)
        np.testing.assert_allclose(dx, model_dx, atol=8 * u * np.max(np.abs(model_dx)), err_msg=name)
        assert np.max(np.abs(y - exact_y)) > 0.3 and np.max(np.abs(dx - exact_dx)) > 1.0
    y, dx = results["x cast to float32"]
    np.testing.assert_allclose(y, exact_y, atol=1e-5)
    np.testing.assert_allclose(dx, exact_dx, atol=1e-4 * np.max(np.abs(exact_dx)))
    try:
        bfloat16 = load("tinygrad_half_statistics").bfloat16_results()
    except Exception:  # noqa: BLE001 - a clang without __bf16: its compile error
        return
    np.testing.assert_allclose(bfloat16["bfloat16 weight"], bfloat16["rounded-mean model"], atol=4 * 2.0 ** -8 * 1.5)
    assert np.max(np.abs(bfloat16["bfloat16 weight"] - bfloat16["exact"])) > 0.3


def test_tinygrad_half_running_statistics_round_every_step(tinygrad):
    """Three steps in float16: the running mean more than 1 ulp off the exact moving average (the exact
    value rounded once would be within half an ulp), both within 4; the same in bfloat16 for the variance
    where this clang compiles bfloat16."""
    repro = load("tinygrad_half_statistics")
    off = repro.ulps_off(tinygrad.dtypes.float16)
    assert 1 < off["mean"] < 4 and off["var"] < 4
    try:
        off = repro.ulps_off(tinygrad.dtypes.bfloat16)
    except Exception:  # noqa: BLE001 - a clang without __bf16: its compile error
        return
    assert 1 < off["var"] < 4 and off["mean"] < 4


def test_flax_fast_variance_forward_and_running_variance():
    """use_fast_variance=True, Linen and NNX alike: float32 1e4 + (0, 1, 2, 3) gives var 0 (y 350
    times too large, running var 0.9 instead of 1.025), float64 1e8 + (0, 1, 2, 3) var 2 instead of 1.25;
    at mean / std 1300 float64 y is off by more than 1e-12 of its scale. use_fast_variance=False: within
    a few ulps of the dtype each time."""
    pytest.importorskip("flax")
    repro = load("flax_fast_variance_forward")
    gross = {"float32, 1e4 + (0, 1, 2, 3)": (100, 0.1), "float64, 1e8 + (0, 1, 2, 3)": (0.1, 0.05)}
    for api in ("linen", "nnx"):
        for name, (y_error, var_error) in gross.items():
            fast_y, fast_var = repro.errors(name, api, True)
            assert fast_y > y_error and fast_var > var_error, (api, name, fast_y, fast_var)
        fast_y, _ = repro.errors("float64, 64 values of mean 346, std 0.27", api, True)
        assert fast_y > 1e-12, (api, fast_y)
        for name, (dtype, _) in repro.INPUTS.items():
            u = float(np.finfo(dtype).eps) / 2
            two_pass_y, two_pass_var = repro.errors(name, api, False)
            assert two_pass_y < 1e3 * u and two_pass_var < 4 * u, (api, name, two_pass_y, two_pass_var)


def test_flax_cross_replica_masked_statistics_are_unweighted():
    """Under jax.pmap with axis_name, a mask leaving 2 and 1 positions on two devices: y is the
    equal-weight average of the devices' masked means (Linen and NNX, fast and two-pass variance),
    0.28 off the batch's y; the same mask on one device and equal shards: the batch's y; a device
    with every position masked: NaN on every device. In a child process: the script sets JAX's
    device count, which must happen before JAX starts."""
    pytest.importorskip("flax")
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPRO / "flax_sync_uneven_shards.py"), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    uneven, even, empty = (found[name] for name in ("uneven (0, 2) | (10)", "even (0, 2) | (10, 6)",
                                                   "empty (0, 2) | (10) | ()"))
    for api in ("linen", "nnx"):
        for what in ("cross-replica", "cross-replica, two-pass"):
            np.testing.assert_allclose(uneven[api][what], uneven["unweighted"], rtol=0, atol=1e-12)
            assert np.max(np.abs(np.subtract(uneven[api][what], uneven["exact"]))) > 0.25
            np.testing.assert_allclose(even[api][what], even["exact"], rtol=0, atol=1e-12)
            assert np.isnan(empty[api][what]).all()
        for ys in (uneven, empty):
            np.testing.assert_allclose(ys[api]["one device, masked"], ys["exact"], rtol=0, atol=1e-12)


def test_seed_post_ignores_eps_and_normalizes_test_batches_with_their_own_statistics():
    """The post's layer: the paper's y at eps = 1e-5 only (off by over 0.4 of y's size at eps = 1e-3 on
    a channel of variance ~1e-3); a single test sample gives y = beta, and the same sample in two test
    batches gives two different outputs."""
    repro = load("seed_post_eps")
    errors = repro.eps_errors()
    assert errors[1e-5] < 1e-14 and errors[1e-3] > 0.4 and errors[1e-2] > 2
    y = repro.test_time_outputs()
    np.testing.assert_allclose(y["alone"], y["beta"], rtol=0, atol=1e-15)
    assert np.max(np.abs(y["batch A"] - y["batch B"])) > 0.5


def test_haiku_one_pass_variance():
    """float32: NaN for two exact values around -7960 and for a channel of mean 1000, std 0.01;
    float64 at mean 346: off by more than 100 times the two-pass formula's u64 kappa."""
    pytest.importorskip("haiku")
    repro = load("haiku_one_pass_variance")
    assert np.isnan(repro.haiku_y(repro.TWO_VALUES)).all()
    assert np.isfinite(repro.two_pass_y(repro.TWO_VALUES)).all()
    assert repro.offset_float32_nan_channels().any()
    for seed in range(3):
        error, two_pass_bound = repro.float64_errors(seed)
        assert error > 100 * two_pass_bound


#: the child process for the Keras-on-torch reproduction (Keras picks its backend once per process)
KERAS_TORCH_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("repro", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.results()))
"""


def test_keras_torch_one_pass_variance():
    """ops.moments gives -4 where torch.var_mean gives the exact 0.015625; y is NaN for float32 and
    float64 x, and the moving variance takes the -4 (0.95 instead of 0.99016)."""
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    done = subprocess.run([sys.executable, "-c", KERAS_TORCH_CHILD, str(REPRO / "keras_torch_one_pass_variance.py")],
                          env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["moments variance"] < 0
    assert results["torch.var_mean variance"] == results["exact variance"]
    for dtype in ("float32", "float64"):
        assert np.isnan(results[f"{dtype} y"]).all()
        assert abs(results[f"{dtype} moving variance"] - results["exact moving variance"]) > 0.01


def test_torch_mixed_double_backward_runs_in_the_half_dtype(torch):
    """float32 weight and bias: with half x, ggamma (a float32 output) is off by more than the half type's
    unit roundoff of the scale (and less than 64 of it); with float32 x, by a few float32 ulps."""
    errors = load("torch_mixed_double_backward_precision").ggamma_errors()
    assert errors["float32 x"] < 8 * 2.0 ** -24
    assert errors["float16 x"] > 2.0 ** -11 and errors["bfloat16 x"] > 2.0 ** -8
    assert errors["float16 x"] < 64 * 2.0 ** -11 and errors["bfloat16 x"] < 64 * 2.0 ** -8
