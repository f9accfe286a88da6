"""The ``paddle`` adapter (``paddle.nn.functional.batch_norm`` on the CPU) against bnref.reference.

Skipped where PaddlePaddle is not installed (the ``paddle`` extra, not the ``test`` extra). The
float32 case and its bound are those of tests/test_adapters_more.py; float64 results are held to
1e-10 of the reference's scale, far below what a wrong formula or convention is off by.
"""
import numpy as np
import pytest

from bnref import reference
from bnref.adapters import create
from bnref.oracle import check
from tests.test_adapters_more import assert_matches_reference, protocol_results

pytest.importorskip("paddle")

EPS = 1e-3


@pytest.fixture(scope="module")
def candidate():
    return create("paddle")


def _arrays(shape, seed=0):
    """x, gamma, beta, dy (float64) for a channels-first ``shape``."""
    rng = np.random.default_rng(seed)
    channels = shape[1]
    return (rng.normal(0.5, 1.5, shape), rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels),
            rng.standard_normal(shape))


def test_paddle_float32_matches_reference(candidate):
    """y, dx, dgamma, dbeta, eval y and one running step: momentum weighs the old value, biased variance."""
    assert_matches_reference(protocol_results(candidate), 1, False, False)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2), (3, 2, 2, 1, 2)], ids=["rank2", "rank3", "rank5"])
def test_paddle_float64_every_declared_rank(candidate, shape):
    """forward, backward and double backward in float64 on ranks other than 4 (channels on axis 1)."""
    assert len(shape) in candidate.ranks
    x, gamma, beta, dy = _arrays(shape)
    rng = np.random.default_rng(1)
    ddx, ddgamma, ddbeta = rng.standard_normal(shape), rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    eps = float(np.float32(EPS))  # the value Paddle's float32 attribute holds
    y = candidate.forward_train(x, gamma, beta, eps)
    assert y.dtype == np.float64 and y.shape == shape
    np.testing.assert_allclose(y, reference.forward_train(x, gamma, beta, eps)[0], rtol=0, atol=1e-10)
    for got, want in zip(candidate.backward(x, gamma, beta, eps, dy), reference.backward(dy, x, gamma, beta, eps)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    for got, want in zip(candidate.double_backward(x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta),
                         reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, eps)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_paddle_float64_eps_is_a_float32_attribute(candidate):
    """On float64 data y is the reference's at float32(eps), not at eps: the convention the adapter documents."""
    x = np.array([-1.0, 1.0, -1.0, 1.0]).reshape(4, 1)
    one, zero = np.ones(1), np.zeros(1)
    y = candidate.forward_train(x, one, zero, 0.1)
    at_float32 = reference.forward_train(x, one, zero, float(np.float32(0.1)))[0]
    assert np.max(np.abs(y - at_float32)) < 1e-15 < np.max(np.abs(y - reference.forward_train(x, one, zero, 0.1)[0]))


def test_paddle_running_statistics_leave_the_callers_arrays_alone(candidate):
    x, *_ = _arrays((4, 3, 2))
    running_mean, running_var = np.zeros(3), np.ones(3)
    new_mean, new_var = candidate.update_running(x, running_mean, running_var, 0.9)
    assert np.array_equal(running_mean, np.zeros(3)) and np.array_equal(running_var, np.ones(3))
    _, mean, var = reference.forward_train(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(new_mean, 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(new_var, 0.9 + 0.1 * var, rtol=1e-6)


def test_paddle_cpu_kernel_has_no_half_dtypes(candidate):
    """The declared dtypes are the kernel's: float16 is refused on the CPU, so the adapter leaves it out."""
    import paddle

    assert candidate.dtypes == ("float32", "float64")
    x = paddle.to_tensor(np.ones((2, 1), np.float16))
    stats = (paddle.to_tensor(np.zeros(1, np.float16)), paddle.to_tensor(np.ones(1, np.float16)))
    with pytest.raises(RuntimeError, match="not registered"):
        paddle.nn.functional.batch_norm(x, *stats, training=True)


def test_no_false_alarm_paddle():
    """The oracle passes Paddle and reports its conventions (float32 eps and momentum included) as such."""
    report = check("paddle", profile="quick")
    assert report.ok, report.render()
    assert all(r.status in ("pass", "not provided") for r in report.results)
    rows = dict(report.fingerprint.rows())
    assert rows["running variance"] == "divides by m (biased)"
    assert rows["momentum"].startswith("momentum=0.1 weighs the old value")
    assert rows["eps stored as"].startswith("float32")
    assert rows["momentum stored as"].startswith("float32")
    assert not report.fingerprint.findings


def test_paddle_single_value_per_channel_is_passed_through(candidate):
    """m = 1 in training: Paddle copies x to y (no gamma, no beta) and leaves the running statistics alone
    (https://github.com/PaddlePaddle/Paddle/issues/11445), where the formula gives y = beta."""
    x, gamma, beta = np.array([[0.5, -2.0, 7.0]]), np.full(3, 1.5), np.array([0.25, -1.0, 2.0])
    assert np.array_equal(candidate.forward_train(x, gamma, beta, 1e-5), x)
    new_mean, new_var = candidate.update_running(x, np.zeros(3), np.ones(3), 0.9)
    assert np.array_equal(new_mean, np.zeros(3)) and np.array_equal(new_var, np.ones(3))
