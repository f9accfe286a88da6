"""The docs example: batch norm over a batch split into shards (docs/sync.md includes the marked part)."""
# --8<-- [start:shards]
import numpy as np

import bnref
from bnref import sync

rng = np.random.default_rng(0)
x = rng.standard_normal((7, 3, 4, 4)) * 2 + 5          # N=7, C=3, H=W=4
gamma, beta = np.ones(3), np.zeros(3)
xs = np.split(x, [1, 1, 5])                             # shards of 1, 0, 4 and 2 samples

ys, mean, var = sync.forward_train_sharded(xs, gamma, beta)
dys = [np.ones_like(shard) for shard in xs]
dxs, dgamma, dbeta = sync.backward_sharded(dys, xs, gamma, mean, var)
# the unbiased running variance uses the global m = 7*4*4 = 112, not a shard's
new_mean, new_var = sync.update_running_sharded(np.zeros(3), np.ones(3), mean, var, xs)

y, mean_all, var_all = bnref.forward_train(x, gamma, beta)
assert np.max(np.abs(np.concatenate(ys) - y)) < 1e-13
# --8<-- [end:shards]
