"""Flax: cross-replica BatchNorm (``axis_name``) with a ``mask`` that leaves different numbers of
positions on different devices normalizes with the equal-weight average of the devices' masked
means -- the statistics of no batch -- and a device whose positions are all masked makes every
device's output NaN. ``flax.linen.BatchNorm`` and ``flax.nnx.BatchNorm`` alike.

Run: ``python docs/repro/flax_sync_uneven_shards.py`` (NumPy, JAX and Flax only; the script gives
JAX four host CPU devices itself, ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which
must be set before JAX starts). ``--json`` prints the numbers as JSON.

``jax.pmap`` gives every device an array of the same shape; Flax's ``mask`` argument ("the positions
for which the mean and variance should be computed") is its way to leave padding, or any other
positions, out of the statistics, and on one device it does exactly that. With ``axis_name`` each
device takes the masked mean of x and of x^2 (or of (x - mean)^2) and ``lax.pmean`` averages these
over the devices with equal weights, whatever each device's count of unmasked positions. For the
3-sample batch (0, 2, 10) held as shards (0, 2) and (10, pad), the batch's mean is 4 and its variance
18.67; Flax uses mean (1 + 10) / 2 = 5.5 and variance (2 + 100) / 2 - 5.5^2 = 20.75, so y is
(-1.21, -0.77, 1.00) instead of (-0.93, -0.46, 1.39). The same masked call on one device, and
equal shards, give the batch's y. A device with no unmasked position takes the mean of nothing,
0 / 0 = NaN, and ``pmean`` hands the NaN to every device. Weighing each device by its count (a
``psum`` of sums and counts) would give the batch's statistics. Upstream: the unweighted average over
devices is https://github.com/google/flax/issues/2417 (closed: per-device arrays of different shapes
cannot exist under SPMD -- the mask gives devices different counts with equal shapes).
"""
import os

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen, nnx  # noqa: E402

jax.config.update("jax_enable_x64", True)

EPS = 1e-5
AXIS = "devices"
#: name -> the shards of a batch of one channel, one shard per device
SPLITS = {
    "uneven (0, 2) | (10)": [[0.0, 2.0], [10.0]],
    "even (0, 2) | (10, 6)": [[0.0, 2.0], [10.0, 6.0]],
    "empty (0, 2) | (10) | ()": [[0.0, 2.0], [10.0], []],
}


def _batch_norm(api, x, mask, axis_name, use_fast_variance):
    """y of a training step of Flax's BatchNorm (gamma 1, beta 0) on x of shape (N, 1)."""
    if api == "linen":
        bn = linen.BatchNorm(use_running_average=False, epsilon=EPS, axis_name=axis_name, dtype=x.dtype,
                             param_dtype=x.dtype, use_fast_variance=use_fast_variance)
        variables = {"params": {"scale": jnp.ones(1, x.dtype), "bias": jnp.zeros(1, x.dtype)},
                     "batch_stats": {"mean": jnp.zeros(1, x.dtype), "var": jnp.ones(1, x.dtype)}}
        return bn.apply(variables, x, mask=mask, mutable=["batch_stats"])[0]
    bn = nnx.BatchNorm(1, use_running_average=False, epsilon=EPS, axis_name=axis_name, dtype=x.dtype,
                       param_dtype=x.dtype, use_fast_variance=use_fast_variance, rngs=nnx.Rngs(0))
    bn.mean.set_value(jnp.zeros(1, x.dtype))  # the running statistics start as float32 otherwise
    bn.var.set_value(jnp.ones(1, x.dtype))
    return bn(x, mask=mask)


def padded(shards):
    """(x, mask): the shards zero-padded to the longest, shape (devices, rows, 1), and which rows are data."""
    rows = max(len(s) for s in shards)
    x = np.zeros((len(shards), rows, 1))
    mask = np.zeros((len(shards), rows, 1), dtype=bool)
    for i, s in enumerate(shards):
        x[i, :len(s), 0], mask[i, :len(s)] = s, True
    return x, mask


def cross_replica_y(shards, api="linen", use_fast_variance=True):
    """y of the batch, concatenated: one shard per device under ``jax.pmap``, BatchNorm with
    ``axis_name`` and the padding masked out."""
    x, mask = padded(shards)
    step = jax.pmap(lambda x_, m_: _batch_norm(api, x_, m_, AXIS, use_fast_variance), axis_name=AXIS)
    y = np.asarray(step(x, mask))
    return np.concatenate([y[i, :len(s), 0] for i, s in enumerate(shards)])


def one_device_masked_y(shards, api="linen", use_fast_variance=True):
    """y of the same padded batch and mask on one device, without ``axis_name``."""
    x, mask = padded(shards)
    y = np.asarray(jax.jit(lambda x_, m_: _batch_norm(api, x_, m_, None, use_fast_variance))(
        x.reshape(-1, 1), mask.reshape(-1, 1))).reshape(x.shape)
    return np.concatenate([y[i, :len(s), 0] for i, s in enumerate(shards)])


def exact_y(shards):
    """Batch norm of the concatenated shards (NumPy, two-pass)."""
    x = np.concatenate([np.asarray(s, np.float64) for s in shards])
    return (x - x.mean()) / np.sqrt(x.var() + EPS)


def unweighted_y(shards):
    """The equal-weight model: mean and mean square averaged over the non-empty shards' own means."""
    x = np.concatenate([np.asarray(s, np.float64) for s in shards])
    mean = np.mean([np.mean(s) for s in shards])
    mean_sq = np.mean([np.mean(np.square(s)) for s in shards])
    return (x - mean) / np.sqrt(mean_sq - mean ** 2 + EPS)


def results():
    """split -> api -> {"cross-replica", "one device, masked", "exact", "unweighted"}: each y as a list
    (Flax's default use_fast_variance; two-pass under "cross-replica, two-pass")."""
    out = {}
    for name, shards in SPLITS.items():
        out[name] = {"exact": exact_y(shards).tolist()}
        if all(len(s) for s in shards):
            out[name]["unweighted"] = unweighted_y(shards).tolist()
        for api in ("linen", "nnx"):
            out[name][api] = {"cross-replica": cross_replica_y(shards, api).tolist(),
                              "cross-replica, two-pass": cross_replica_y(shards, api, False).tolist(),
                              "one device, masked": one_device_masked_y(shards, api).tolist()}
    return out


def main():
    found = results()
    if "--json" in sys.argv:
        print(json.dumps(found))
        return
    import flax

    print(f"flax {flax.__version__}, jax {jax.__version__}, {jax.local_device_count()} CPU devices; eps = {EPS}")
    for name, ys in found.items():
        print(f"\nshards {name}: exact y {np.round(ys['exact'], 4)}")
        if "unweighted" in ys:
            print(f"  equal-weight average of the shards' means: y {np.round(ys['unweighted'], 4)}")
        for api in ("linen", "nnx"):
            for what in ("cross-replica", "cross-replica, two-pass", "one device, masked"):
                print(f"  {api:5} {what:24} y {np.round(ys[api][what], 4)}")


if __name__ == "__main__":
    main()
