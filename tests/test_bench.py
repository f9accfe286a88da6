"""The benchmark measures like with like: its baselines compute batch norm, its memory probe sees
allocations, and bnref allocates nothing full-size beyond its outputs. No timing here."""
import time

import numpy as np
import pytest

import bnref
from bnref import _kernels, bench


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


def test_pass_calls_cover_every_split_pass_with_a_bound():
    inp = _case("NHWC", "float32", shape=(4, 8, 6, 6))
    calls = bench.pass_calls(inp)
    steps = {step for step, _ in calls}
    assert steps == {"statistics", "forward combine", "backward sums", "backward combine"}
    assert all((step, impl) in calls for step in steps for impl in ("bnref", "bound"))
    mean, m2 = calls[("statistics", "bnref")]()
    x64 = inp["x"].reshape(-1, 8).astype(np.float64)  # channels-last: (N*H*W, C)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(0)) ** 2).sum(0), rtol=1e-10)

