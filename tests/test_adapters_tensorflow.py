"""The TensorFlow adapters against bnref.reference, and what they declare.

Skipped when TensorFlow is not installed (the ``tensorflow`` extra, not the ``test`` one). The
adapters are built once per module: importing TensorFlow takes seconds. The float32 comparisons
use the bounds of ``tests/test_adapters_more.py`` (8 u kappa^2 of each quantity's scale); the
half dtypes of the fused kernel are checked in ``tests/test_adapters_half.py``.
"""
import numpy as np
import pytest

from bnref import reference
from bnref.adapters import ADAPTERS, create
from bnref.conformance import REQUIRES
from bnref.oracle.fingerprint import fingerprint
from bnref.testing import assert_close, condition_number, scales
from tests.test_adapters_more import assert_matches_reference, protocol_results

#: adapter -> running statistics: (momentum weighs the new value?, unbiased running variance?)
TENSORFLOW_ADAPTERS = {
    "tensorflow": (False, False),
    "tensorflow-fused": (True, True),
    "tensorflow-fused-nchw": (True, True),
}
EPS = 1e-3


@pytest.fixture(scope="module")
def candidates():
    pytest.importorskip("tensorflow")
    return {name: create(name) for name in TENSORFLOW_ADAPTERS}


def test_every_tensorflow_adapter_is_registered_with_its_framework():
    for name in TENSORFLOW_ADAPTERS:
        assert name in ADAPTERS and "tensorflow" in REQUIRES[name]


@pytest.mark.parametrize("name", list(TENSORFLOW_ADAPTERS))
def test_adapter_matches_reference(candidates, name):
    """y, dx, dgamma, dbeta, eval y and one running-statistics step, float32, 4D."""
    candidate = candidates[name]
    assert_matches_reference(protocol_results(candidate), candidate.channel_axis, *TENSORFLOW_ADAPTERS[name])


def _case(shape, channel_axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[channel_axis]
    x = rng.normal(0.5, 1.5, shape).astype(dtype)
    dy, ddx = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    gamma, beta, ddgamma, ddbeta = (rng.uniform(0.5, 2, channels).astype(dtype) for _ in range(4))
    return x, gamma, beta, dy, ddx, ddgamma, ddbeta


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2, 4)])
def test_composite_takes_any_rank_in_float64(candidates, shape):
    """Channels-last of rank 2 and 5: float64 results, y and the gradients at float64 precision."""
    candidate = candidates["tensorflow"]
    assert candidate.channel_axis == -1 and "float64" in candidate.dtypes
    x, gamma, beta, dy, *_ = _case(shape, -1, "float64")
    kappa, m = condition_number(x, -1, EPS), x.size // shape[-1]
    scale = scales(x, gamma, beta, EPS, -1, dy=dy)
    y = candidate.forward_train(x, gamma, beta, EPS)
    assert y.dtype == np.float64
    assert_close("y", y, reference.forward_train(x, gamma, beta, EPS, -1)[0], dtype="float64", kappa=kappa, m=m,
                 scale=scale["y"])
    for q, got, want in zip(("dx", "dgamma", "dbeta"), candidate.backward(x, gamma, beta, EPS, dy),
                            reference.backward(dy, x, gamma, beta, EPS, -1)):
        assert got.dtype == np.float64
        assert_close(q, got, want, dtype="float64", kappa=kappa, m=m, scale=scale[q])


def test_fused_kernel_declares_what_it_takes(candidates):
    """4D and 5D, float32 and half x with float32 parameters; other ranks are refused with a ValueError and
    float64 by the kernel itself, so the declarations keep the oracle's cases (and probes) within them."""
    tf = pytest.importorskip("tensorflow")
    for name in ("tensorflow-fused", "tensorflow-fused-nchw"):
        candidate = candidates[name]
        assert candidate.ranks == (4, 5)
        assert set(candidate.dtypes) == {"float32", "float16", "bfloat16"} and candidate.param_dtype == "float32"
    fused = candidates["tensorflow-fused"]
    ones = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="rank 4 or 5"):
        fused.forward_train(np.ones((4, 2, 3), np.float32), ones, 0 * ones, EPS)
    with pytest.raises(tf.errors.InvalidArgumentError):
        fused.forward_train(np.ones((4, 2, 2, 3)), ones.astype(np.float64), 0 * ones.astype(np.float64), EPS)


@pytest.mark.parametrize("name", ["tensorflow-fused", "tensorflow-fused-nchw"])
def test_fingerprint_probes_the_fused_kernel_in_4d(candidates, name):
    """Every probe runs (in 4D float32), and the conventions TensorFlow documents come out:
    exponential_avg_factor on the new value, the running variance unbiased."""
    fp = fingerprint(candidates[name])
    rows = dict(fp.rows())
    assert fp.dtype == "float32" and not fp.findings
    assert not any("probe failed" in str(v) for v in rows.values()), rows
    assert rows["running variance"].startswith("divides by m - 1")
    assert "weighs the new value" in rows["momentum"]


@pytest.mark.parametrize("name, shape", [("tensorflow-fused", (3, 2, 2, 2)), ("tensorflow-fused-nchw", (3, 1, 2, 2)),
                                         ("tensorflow-fused-nchw", (2, 2, 2, 1, 2))])
def test_fused_double_backward_matches_reference(candidates, name, shape):
    """The registered gradient of FusedBatchNormGradV3, one channel in NCHW included (its float32
    composite squeezes the channel axis there)."""
    candidate = candidates[name]
    axis = candidate.channel_axis
    x, gamma, beta, dy, ddx, ddgamma, ddbeta = _case(shape, axis, "float32", seed=2)
    kappa, m = condition_number(x, axis, EPS), x.size // shape[axis]
    scale = scales(x, gamma, beta, EPS, axis, dy=dy, ddx=ddx, ddgamma=ddgamma, ddbeta=ddbeta)
    got = candidate.double_backward(x, gamma, beta, EPS, dy, ddx, ddgamma, ddbeta)
    want = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, EPS, axis)
    for q, g, w in zip(("gx", "ggamma", "gdy"), got, want):
        assert g.shape == w.shape
        assert_close(q, g, w, dtype="float32", kappa=kappa, m=m, scale=scale[q])


def test_composite_double_backward_is_off_by_a_constant_per_channel(candidates):
    """The adapter passes on TensorFlow's result: gx differs from the reference by the same value in
    every element of a channel (the stop_gradient in tf.nn.moments, docs/repro/), ggamma and gdy agree."""
    shape = (4, 2)
    x, gamma, beta, dy, ddx, ddgamma, ddbeta = _case(shape, -1, "float64", seed=3)
    gx, ggamma, gdy = candidates["tensorflow"].double_backward(x, gamma, beta, EPS, dy, ddx, ddgamma, ddbeta)
    want = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, EPS, -1)
    np.testing.assert_allclose(ggamma, want[1], rtol=1e-10)
    np.testing.assert_allclose(gdy, want[2], rtol=1e-10)
    offset = gx - want[0]
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], shape), rtol=1e-8)
    assert np.all(np.abs(offset[0]) > 1e-3 * np.max(np.abs(want[0])))
