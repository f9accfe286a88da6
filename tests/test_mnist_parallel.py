"""Data-parallel MNIST: the pieces, in one process. The 2-process run is in tests/test_sync_mpi.py."""
from types import SimpleNamespace

import numpy as np
import pytest

from bnref import sync
from bnref.mnist.layers import BatchNorm, Dropout
from bnref.mnist.parallel import DataParallel, ShardedDropout, SyncBatchNorm


def _dp(rank, size, batch):
    return DataParallel(SimpleNamespace(rank=rank, size=size), batch)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [5, 7, 100])
def test_the_processes_rows_tile_the_batch_in_order(size, batch):
    rows = [_dp(rank, size, batch).rows for rank in range(size)]
    assert np.concatenate([np.arange(batch)[r] for r in rows]).tolist() == list(range(batch))
    assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1


def test_a_batch_smaller_than_the_processes_is_an_error():
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        _dp(0, 3, 2)


def test_sharded_dropout_keeps_its_rows_of_the_global_mask():
    """Process 1 of 2 gets rows 5..9 of the mask a single process draws for the batch of 10."""
    x = np.ones((10, 6), np.float32)
    single = Dropout(0.5, np.random.default_rng(4))
    single.forward(x, training=True)
    sharded = ShardedDropout(0.5, np.random.default_rng(4), _dp(1, 2, 10))
    sharded.forward(x[5:], training=True)
    np.testing.assert_array_equal(sharded.mask, single.mask[5:])


def test_sync_batch_norm_on_one_shard_is_batch_norm():
    """With one in-process shard, SyncBatchNorm's y, dx, dgamma, dbeta and running statistics are BatchNorm's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    dy = rng.standard_normal((8, 5)).astype(np.float32)
    dp = DataParallel(sync.InProcess(), 8)
    plain, synced = BatchNorm(5), SyncBatchNorm(5, dp)
    np.testing.assert_allclose(synced.forward(x, True), plain.forward(x, True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(synced.backward(dy), plain.backward(dy), rtol=1e-5, atol=1e-6)
    for a, b in zip(synced.grads + [synced.running_mean, synced.running_var],
                    plain.grads + [plain.running_mean, plain.running_var]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_cli_rejects_a_bad_eval_every(capsys):
    from bnref.mnist import cli

    with pytest.raises(SystemExit):
        cli.main(["--eval-every", "0"])
    assert "--eval-every must be >= 1" in capsys.readouterr().err
