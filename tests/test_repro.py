"""The standalone reproductions of docs/repro/ assert what the frameworks do today.

Each test pins the behaviour a reproduction documents, so that an upstream release that
changes it (a fix) fails here and the page is updated. Skipped when the framework is missing.
"""
import importlib.util
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
