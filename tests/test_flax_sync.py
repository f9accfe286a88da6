"""The flax-sync adapter: Flax cross-replica BN under jax.pmap on 4 host CPU devices.

Skipped without flax. On an even split Flax's cross-replica BN is batch norm of the whole batch;
on shards of unequal size (padding left out with Flax's ``mask``) it averages the shards' masked
means with equal weights -- the statistics of no batch -- and an empty shard makes it NaN. These
tests pin both findings, so a Flax release that fixes them shows up here.
"""
import numpy as np
import pytest

import bnref

pytest.importorskip("flax")


@pytest.fixture(scope="module")
def candidate():
    from bnref.adapters import create

    return create("flax-sync")


def _batch(n=8, dtype="float64"):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, 5, 3)) * 2 + 1).astype(dtype)
    return x, rng.uniform(0.5, 2, 3).astype(dtype), rng.standard_normal(3).astype(dtype), \
        rng.standard_normal(x.shape).astype(dtype)


def test_even_split_is_batch_norm_of_the_whole_batch(candidate):
    """Shards (2, 2, 2, 2) on four devices: y, dx, dgamma, dbeta of the concatenated batch."""
    x, gamma, beta, dy = _batch()
    y, mean, var = bnref.forward_train(x, gamma, beta, 1e-5, -1)
    expected = bnref.backward(dy, x, gamma, mean, var, 1e-5, -1)
    xs, dys = np.split(x, 4), np.split(dy, 4)
    np.testing.assert_allclose(np.concatenate(candidate.forward_train_sharded(xs, gamma, beta, 1e-5)), y,
                               rtol=0, atol=1e-12)
    dxs, dgamma, dbeta = candidate.backward_sharded(xs, gamma, beta, 1e-5, dys)
    for got, want in zip((np.concatenate(dxs), dgamma, dbeta), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_uneven_split_averages_the_shard_means_unweighted(candidate):
    """Shards (1, 7): Flax's statistics are the equal-weight average of each shard's masked mean
    and mean square (pmean of local means) -- not the batch's."""
    x, gamma, beta, _ = _batch()
    xs = [x[:1], x[1:]]
    y = np.concatenate(candidate.forward_train_sharded(xs, gamma, beta, 1e-5))
    assert np.max(np.abs(y - bnref.forward_train(x, gamma, beta, 1e-5, -1)[0])) > 0.1
    axes = (0, 1)
    mean = np.mean([s.mean(axis=axes) for s in xs], axis=0)
    mean_sq = np.mean([(s ** 2).mean(axis=axes) for s in xs], axis=0)
    unweighted = gamma * (x - mean) / np.sqrt(mean_sq - mean ** 2 + 1e-5) + beta
    np.testing.assert_allclose(y, unweighted, rtol=0, atol=1e-10)


def test_an_empty_shard_gives_nan(candidate):
    x, gamma, beta, _ = _batch()
    ys = candidate.forward_train_sharded([x[:0], x[:4], x[4:]], gamma, beta, 1e-5)
    assert np.isnan(np.concatenate(ys)).all()


def test_the_oracle_reports_the_uneven_split(candidate):
    from bnref.oracle import check

    report = check(candidate, dtypes=["float64"], profile="quick", properties=["sharded_uneven"])
    result = report.result("sharded_uneven", "float64")
    assert result.failed and "over shards" in result.failures[0], result


def test_the_child_process_gives_the_same_bits(candidate):
    """When JAX already runs here with one device, the candidate lives in a child process."""
    from bnref.adapters._flax_sync import _ChildFlaxSync

    x, gamma, beta, dy = _batch(6, "float32")
    xs, dys = [x[:2], x[2:4], x[4:]], [dy[:2], dy[2:4], dy[4:]]
    child = _ChildFlaxSync()
    for method, args in (("forward_train_sharded", (xs, gamma, beta, 1e-3)),
                         ("backward_sharded", (xs, gamma, beta, 1e-3, dys))):
        here, there = getattr(candidate, method)(*args), getattr(child, method)(*args)
        np.testing.assert_array_equal(_flatten(here), _flatten(there), err_msg=method)


def _flatten(result) -> np.ndarray:
    """Every array of a result (arrays, lists of arrays, or a tuple of both) as one vector."""
    arrays = []
    for item in result:
        arrays.extend(item if isinstance(item, list) else [item])
    return np.concatenate([np.ravel(a) for a in arrays])
