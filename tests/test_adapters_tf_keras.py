"""The Keras 2 (``tf_keras``) adapters against bnref.reference on small inputs.

``tf-keras`` and ``tf-keras-nonfused`` are built once per module (importing TensorFlow takes
seconds); skipped where tf_keras is not installed. ``keras-tensorflow`` (Keras 3 on TensorFlow)
runs in a child process in tests/test_adapters_more.py, as Keras picks its backend once per process.
"""
import numpy as np
import pytest

from bnref import reference
from bnref.adapters import create
from bnref.dtypes import unit_roundoff
from bnref.testing import condition_number, scales
from tests.test_adapters_more import EPS, assert_matches_reference, protocol_results


@pytest.fixture(scope="module")
def tf_keras_adapters():
    """name -> the built tf_keras adapter, for both of its code paths."""
    pytest.importorskip("tf_keras")
    return {name: create(name) for name in ("tf-keras", "tf-keras-nonfused")}


@pytest.mark.parametrize("name, unbiased", [("tf-keras", True), ("tf-keras-nonfused", False)])
def test_tf_keras_matches_reference(tf_keras_adapters, name, unbiased):
    """y, dx, dgamma, dbeta, eval y and one running-statistics step of a 4D float32 input; the fused kernel
    keeps its Bessel-corrected batch variance in the moving variance, the layer's own ops the biased one."""
    assert_matches_reference(protocol_results(tf_keras_adapters[name]), -1, False, unbiased)


def double_backward_error(candidate, shape, dtype):
    """max |(gx, ggamma, gdy) - reference| / max |reference| over the three, for one random input."""
    rng = np.random.default_rng(1)
    x, dy, ddx = rng.normal(0.5, 1.5, shape), rng.standard_normal(shape), rng.standard_normal(shape)
    gamma, beta, ddgamma, ddbeta = rng.uniform(0.5, 2, 3), rng.normal(0, 1, 3), *rng.standard_normal((2, 3))
    got = candidate.double_backward(*(a.astype(dtype) for a in (x, gamma, beta)), EPS,
                                    *(a.astype(dtype) for a in (dy, ddx, ddgamma, ddbeta)))
    want = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, EPS, -1)
    return max(float(np.max(np.abs(g - w)) / np.max(np.abs(w))) for g, w in zip(got, want))


def test_double_backward_of_the_fused_kernel_is_right_and_of_tf_nn_moments_is_not(tf_keras_adapters):
    """The tapes' plumbing is right (the fused kernel's second-order gradient agrees with the reference);
    the non-fused layer's, on ``tf.nn.moments``, is off far beyond float64's rounding
    (docs/repro/tf_moments_double_backward.py)."""
    assert double_backward_error(tf_keras_adapters["tf-keras"], (4, 2, 2, 3), "float32") < 1e-4
    assert double_backward_error(tf_keras_adapters["tf-keras-nonfused"], (6, 3), "float64") > 1e-3


def test_tf_keras_nonfused_float64_2d_matches_reference(tf_keras_adapters):
    """float64 on a 2D input (the path the default layer takes there): y and the gradients to float64 rounding."""
    candidate = tf_keras_adapters["tf-keras-nonfused"]
    rng = np.random.default_rng(2)
    x, dy = rng.normal(3, 0.5, (6, 3)), rng.standard_normal((6, 3))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(0, 1, 3)
    kappa, scale = condition_number(x, -1, EPS), scales(x, gamma, beta, EPS, -1, dy=dy)
    got = {"y": candidate.forward_train(x, gamma, beta, EPS),
           **dict(zip(("dx", "dgamma", "dbeta"), candidate.backward(x, gamma, beta, EPS, dy)))}
    want = {"y": reference.forward_train(x, gamma, beta, EPS, -1)[0],
            **dict(zip(("dx", "dgamma", "dbeta"), reference.backward(dy, x, gamma, beta, EPS, -1)))}
    for q in got:
        assert got[q].dtype == np.float64
        np.testing.assert_allclose(got[q], want[q], rtol=0, atol=8 * unit_roundoff("float64") * kappa ** 2 * scale[q])
