"""The benchmark measures like with like: its baselines compute batch norm, its memory probe sees
allocations, and bnref allocates nothing full-size beyond its outputs. No timing here."""
import os
import time

import numpy as np
import pytest

import bnref
from bnref import _kernels, bench
from bnref.dtypes import KERNEL_NAMES


def _case(layout, dtype="float64", shape=(6, 5, 4, 3)):
    return bench.make_inputs(bench.Case(shape, layout, dtype), seed=3)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_numpy_baseline_is_batch_norm(layout):
    """The plain-NumPy baseline agrees with bnref (forward and backward), so the ratios compare equals."""
    inp = _case(layout)
    x, dy, gamma, beta, axis = inp["x"], inp["dy"], inp["gamma"], inp["beta"], inp["axis"]
    y, mean, var = bnref.forward_train(x, gamma, beta, bench.EPS, axis)
    y_np, mean_np, invstd_np = bench.numpy_forward(x, gamma, beta, bench.EPS, axis)
    np.testing.assert_allclose(y_np, y, rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = bnref.backward(dy, x, gamma, mean, var, bench.EPS, axis)
    dx_np, dgamma_np, dbeta_np = bench.numpy_backward(dy, x, gamma, mean_np, invstd_np, axis)
    np.testing.assert_allclose(dx_np, dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma_np, dgamma, rtol=1e-12)
    np.testing.assert_allclose(dbeta_np, dbeta, rtol=1e-12, atol=1e-12)


def test_torch_rows_run_the_same_batch_norm_in_channels_last():
    """torch sees the same numbers, as a logical NCHW tensor stored channels_last (no copy)."""
    torch = pytest.importorskip("torch")
    inp = _case("NHWC", "float32")
    calls = bench.torch_calls(torch, inp)
    y_torch = calls[("torch", "fwd")]()
    assert y_torch.is_contiguous(memory_format=torch.channels_last)
    y = bnref.forward_train(inp["x"], inp["gamma"], inp["beta"], bench.EPS, -1)[0]
    np.testing.assert_allclose(y_torch.permute(0, 2, 3, 1).numpy(), y, rtol=1e-4, atol=1e-5)


def test_peak_extra_bytes_counts_temporaries_not_outputs():
    big = 1 << 20

    def temporary():
        return float(np.ones(big).sum())  # 8 MB freed before returning

    def output():
        return np.ones(big)  # 8 MB handed to the caller

    assert bench.peak_extra_bytes(temporary) >= 8 * big
    assert bench.peak_extra_bytes(output) < big // 8


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bnref_allocates_its_outputs_plus_O_of_C(layout):
    """No full-size temporaries in forward or backward, and none at all with out=."""
    inp = _case(layout, "float32", shape=(16, 8, 32, 32))  # 512 KiB per array
    channels = 8
    # per-chunk partial sums (at most MAX_CHUNKS x 5 x C float64), a few (C,) vectors, bookkeeping
    bound = (_kernels.MAX_CHUNKS * 5 + 16) * channels * 8 + 64 * 1024
    calls = bench.bnref_calls(inp)
    for key in [("bnref", "fwd"), ("bnref", "fwd+bwd"), ("bnref out=", "fwd"), ("bnref out=", "fwd+bwd")]:
        calls[key]()  # compile outside the measurement
        extra = bench.peak_extra_bytes(calls[key])
        assert extra <= bound, f"{key} allocated {extra} bytes beyond its outputs (bound {bound})"


def test_acceptance_flags_misses():
    def row(impl, op, vs, frac, case="64x64x56x56 NCHW"):
        return bench.Row(case, "float32", 2, impl, op, 1.0, 0.9, 10.0, frac, vs, 0, 20.0, 30.0)

    lines = bench.acceptance([row("bnref", "fwd", 1.5, 0.4), row("bnref", "fwd+bwd", 1.1, 0.4),
                              row("bnref out=", "fwd+bwd", 1.5, 0.7), row("bnref out=", "fwd", 1.5, 0.5)], 2)
    assert [line.split()[0] for line in lines] == ["ok", "MISS", "ok", "MISS"]


def test_round_robin_shuffles_so_no_call_always_follows_the_same_one():
    """Each call leaves its data in the caches the next one starts with: every round samples
    each call once, in a new order, so each call runs after several different neighbors."""
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abcd"}
    bench.sample_ms(calls, repeats=8, min_sample_s=0.0, settle_s=0.0)
    timed = order[2 * len(calls):]  # after the warm-up and the calibration call of each
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    before = {name: {r[r.index(name) - 1] for r in rounds if r.index(name) > 0} for name in "abcd"}
    assert all(len(names) >= 2 for names in before.values()), before


def test_short_rounds_take_more_of_them_up_to_a_bound():
    """A case whose rounds are short is sampled more often (its median is then steadier), up to
    MAX_ROUNDS_FACTOR x the rounds asked for; long rounds keep the number asked for."""
    def rounds(sleep_s, min_total_s):
        count = {"n": 0}

        def call():
            count["n"] += 1
            time.sleep(sleep_s)
        bench.sample_ms({"a": call}, repeats=3, min_sample_s=0.0, settle_s=0.0, min_total_s=min_total_s)
        return count["n"] - 2  # less the warm-up and the calibration call
    assert rounds(0.0, 0.0) == 3
    assert rounds(0.0, 10.0) == 3 * bench.MAX_ROUNDS_FACTOR
    assert 3 < rounds(0.01, 0.1) < 3 * bench.MAX_ROUNDS_FACTOR
    assert rounds(0.05, 0.1) == 3


def test_pass_bounds_compute_what_they_stand_for():
    """--passes compares each pass with a loop of the same traffic; those loops must compute their
    sums and elementwise maps, or they could be optimized away and time nothing."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(10_001), rng.standard_normal(10_001)
    np.testing.assert_allclose(bench._read_sum(x, None), x.sum(), rtol=1e-12)
    np.testing.assert_allclose(bench._read_sum(x, y), x.sum() + y.sum(), rtol=1e-12)
    out = np.empty_like(x)
    bench._stream_two(x, 1.5, y, -0.25, out)
    np.testing.assert_allclose(out, 1.5 * x - 0.25 * y, rtol=1e-15)
    bits = np.array([0, 1, 40000, 65535], np.uint16)
    wide = np.empty(4, np.float32)
    bench._stream_widen(bits, wide)
    np.testing.assert_array_equal(wide, [0, 1, 40000, 65535])


def test_pass_calls_cover_every_split_pass_with_a_bound():
    inp = _case("NHWC", "float32", shape=(4, 8, 6, 6))
    calls = bench.pass_calls(inp)
    steps = {step for step, _ in calls}
    assert steps == {"statistics", "forward combine", "backward sums", "backward combine"}
    assert all((step, impl) in calls for step in steps for impl in ("bnref", "bound"))
    mean, m2 = calls[("statistics", "bnref")]()
    x64 = inp["x"].reshape(-1, 8).astype(np.float64)  # channels-last: (N*H*W, C)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(0)) ** 2).sum(0), rtol=1e-10)



HALF = ["float16", "bfloat16"]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_half_inputs_hold_half_values_with_float32_parameters(dtype, layout):
    """x and dy in the 16-bit format (ml_dtypes' bfloat16 for bfloat16); gamma and beta float32
    holding values of that format, so either parameter dtype gives the comparison the same numbers."""
    inp = _case(layout, dtype)
    assert inp["x"].dtype == np.dtype(dtype) and inp["dy"].dtype == np.dtype(dtype)
    assert inp["x"].flags.c_contiguous and inp["axis"] == (-1 if layout == "NHWC" else 1)
    assert bench.param_dtype(dtype) == "float32"
    for name in ("gamma", "beta"):
        values = inp[name]
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values.astype(dtype).astype(np.float32), values)
    assert len(np.unique(inp["x"])) > 100  # not flushed to a few values by the rounding


def test_parameter_dtype_follows_the_dtype_table():
    assert bench.param_dtype("float32") == "float32"
    assert bench.param_dtype("float64") == "float64"
    assert bench.has_numpy_baseline("float32") and not any(bench.has_numpy_baseline(d) for d in HALF)


@pytest.mark.parametrize("dtype", HALF)
def test_torch_sees_the_same_half_bits(dtype):
    """torch gets x in its own 16-bit dtype on the same memory (bfloat16 via the uint16 view)."""
    torch = pytest.importorskip("torch")
    x = _case("NCHW", dtype)["x"]
    t = bench.torch_tensor(torch, x)
    assert t.dtype == getattr(torch, dtype) and t.data_ptr() == x.ctypes.data
    np.testing.assert_array_equal(t.view(torch.int16).numpy().view(np.uint16), x.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF)
def test_torch_rows_run_half_batch_norm_in_its_dtype(dtype):
    """fwd and fwd+bwd in the half dtype with float32 parameters, channels_last kept, and y is batch
    norm of the same numbers (float64 formulas, to the format's rounding)."""
    torch = pytest.importorskip("torch")
    inp = _case("NHWC", dtype, shape=(8, 5, 4, 3))
    calls = bench.torch_calls(torch, inp)
    y = calls[("torch", "fwd")]()
    assert y.dtype == getattr(torch, dtype) and y.is_contiguous(memory_format=torch.channels_last)
    wide = {k: inp[k].astype(np.float64) for k in ("x", "gamma", "beta")}
    y_ref = bench.numpy_forward(wide["x"], wide["gamma"], wide["beta"], bench.EPS, -1)[0]
    u = 2.0 ** -(11 if dtype == "float16" else 8)
    y_nhwc = y.float().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(y_nhwc, y_ref, rtol=4 * u, atol=4 * u)
    _, (dx, dgamma, dbeta) = calls[("torch", "fwd+bwd")]()
    assert dx.dtype == getattr(torch, dtype) and dgamma.dtype == dbeta.dtype == torch.float32
    np.testing.assert_allclose(dbeta.numpy(), inp["dy"].astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", HALF)
def test_half_limits_stream_the_same_bytes_as_uint16(dtype):
    """The ceiling and copy loops run for the 16-bit formats (Numba has no half type, NumPy no
    bfloat16 arithmetic) over uint16 buffers of the same size in bytes."""
    calls = bench.limit_calls(4096, dtype)
    for fn in calls.values():
        fn()
    src, dst = (cell.cell_contents for cell in calls[("copy", "copy")].__closure__
                if isinstance(cell.cell_contents, np.ndarray))
    assert src.dtype == dst.dtype == np.uint16 and src.nbytes == 4096
    np.testing.assert_array_equal(dst, src)
    x = np.arange(10, dtype=np.float32).astype(dtype)
    assert bench.bit_view(x).dtype == np.uint16 and np.shares_memory(bench.bit_view(x), x)
    assert bench.bit_view(np.zeros(3, np.float32)).dtype == np.float32


def _row(dtype, impl, op, vs, frac, case="64x64x56x56 NCHW"):
    return bench.Row(case, dtype, 2, impl, op, 1.0, 0.9, 10.0, frac, vs, 0, 20.0, 30.0, 1.0,
                     bench.param_dtype(dtype))


def test_half_acceptance_compares_with_float32s_fraction_of_the_ceiling():
    """Half formats: >= 1.2x torch on the large shapes only, and out= at least float32's fraction
    of the ceiling on the same case and op in the same run."""
    rows = [_row("float32", "bnref out=", "fwd", 1.5, 0.70), _row("float32", "bnref out=", "fwd+bwd", 1.5, 0.80),
            _row("float16", "bnref", "fwd", 1.3, 0.5), _row("float16", "bnref", "fwd", 0.5, 0.5, case="100x784 NC"),
            _row("float16", "bnref out=", "fwd", 1.3, 0.72), _row("bfloat16", "bnref out=", "fwd+bwd", 1.3, 0.75)]
    lines = [line for line in bench.acceptance(rows, 2) if "float32 " not in line]
    assert [line.split()[0] for line in lines] == ["ok", "ok", "MISS"], lines
    assert "float32's 70%" in lines[1] and "float32's 80%" in lines[2]
    alone = bench.acceptance([_row("bfloat16", "bnref out=", "fwd", 1.3, 0.9)], 2)
    assert [line.split()[0] for line in alone] == ["n/a"]


def test_markdown_and_plots_per_dtype():
    rows = [_row(d, impl, op, 1.3, 0.7) for d in ("float32", "bfloat16") for impl in ("bnref", "bnref out=")
            for op in ("fwd", "fwd+bwd")]
    summary = bench.markdown_summary(rows, 2, "bfloat16")
    assert "bfloat16, float32 parameters, 2 thread(s)" in summary and summary.count("\n") == 3
    assert bench.plot_paths("out/run.png", ["bfloat16", "float32"]) == {
        "float32": "out/run.png", "bfloat16": "out/run-bfloat16.png"}


def test_dtypes_flag_names_the_dtypes_the_kernels_take(capsys, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", os.environ.get("GOMP_SPINCOUNT", "10000"))  # main sets it; restored after
    with pytest.raises(SystemExit):
        bench.main(["--dtypes", "int8", "--no-cold-start"])
    err = capsys.readouterr().err
    assert "'int8' is not one of" in err and all(name in err for name in KERNEL_NAMES)


@pytest.mark.parametrize("dtype", HALF)
def test_half_pass_calls_add_the_widening_and_stream_bit_patterns(dtype):
    """--passes for a 16-bit format: its widening to float32 joins the passes, the statistics run on
    the float32 copy, and the elementwise bounds stream uint16 of x's size."""
    inp = _case("NCHW", dtype, shape=(4, 8, 6, 6))
    calls = bench.pass_calls(inp)
    steps = {step for step, _ in calls}
    assert steps == {"widen to float32", "statistics", "forward combine", "backward sums", "backward combine"}
    assert all((step, impl) in calls for step in steps for impl in ("bnref", "bound"))
    for fn in calls.values():
        fn()
    mean, m2 = calls[("statistics", "bnref")]()
    x64 = np.moveaxis(inp["x"].astype(np.float64), 1, -1).reshape(-1, 8)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(0)) ** 2).sum(0), rtol=1e-10)
