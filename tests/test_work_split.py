"""The kernels' work split -- chunks of rows, tiles of channels, blocks, the parallel and serial
twins -- on inputs large enough to use all of it, against plain float64 NumPy.

The property suite draws small shapes, which fit in one chunk and one block; these shapes do
not: they take many chunks (some of them uneven), several tiles of channels (one partial),
blocks whose second pass runs fused with the next one, and fewer rows than a chunk wants.
"""
import numpy as np
import pytest

import bnref
from bnref import _core, _kernels, testing

# (shape, channel_axis); each comment says what the shape exercises
SHAPES = [
    ((100, 8192), 1),         # 16 chunks of 7 rows would leave two empty: chunking must not
    ((65, 8192), 1),          # the same with 5 rows a chunk
    ((1000, 600), 1),         # channels-last: a full and a partial tile of channels, many blocks
    ((40, 30, 30, 3), -1),    # channels-last with few channels: long blocks of rows, fused passes
    ((64, 3, 40, 40), 1),     # channels-first: many rows, groups of channels smaller than the group
    ((3, 20, 70, 70), 1),     # channels-first with fewer rows than a chunk wants
    ((9, 17, 1000), 1),       # channels-first, rows in pairs and a leftover row
    ((1, 3, 300, 300), 1),    # one image: one chunk, one channel per work item
    ((33000, 64), 1),         # channels-last, 16.9 MB of float64: combine's non-temporal stores
    ((70, 19, 2000), 1),      # channels-first forward in groups of 2 channels (the last one alone),
                              # two blocks of rows, the second with a partial step of rows
]


def _reference(x, dy, gamma, eps, axis):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * invstd
    g = gamma.reshape(shape)
    dbeta = dy.sum(axis=axes, keepdims=True)
    dgamma = (dy * xhat).sum(axis=axes, keepdims=True)
    m = x.size // x.shape[axis]
    dx = g * invstd * (dy - dbeta / m - xhat * dgamma / m)
    return mean.ravel(), var.ravel(), g * xhat, dx, dgamma.ravel(), dbeta.ravel()


@pytest.fixture(params=["fused", "split"])
def forward_path(request, monkeypatch):
    """Run the training forward and the backward through the fused kernels
    (:func:`bnref._kernels.forward_fused`, :func:`bnref._kernels.backward_fused`) on every shape
    ("fused"), or never ("split": channel_moments or channel_sums, then combine)."""
    if request.param == "fused":
        monkeypatch.setattr(_kernels, "FUSED_ITEM_BYTES", 1 << 62)
        monkeypatch.setattr(_kernels, "FUSED_L2_BYTES", 1 << 62)
        monkeypatch.setattr(_kernels, "FUSED_MAX_ROWS", 1 << 62)
    else:
        monkeypatch.setattr(_kernels, "fused_width", lambda *shape: 0)
    return request.param


@pytest.mark.parametrize("shape,axis", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_large_inputs_match_float64_numpy(shape, axis, forward_path):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3 + 7
    dy = rng.standard_normal(shape)
    c = shape[axis]
    gamma, beta = 1 + 0.1 * rng.standard_normal(c), np.zeros(c)
    eps = 1e-5
    mean_ref, var_ref, y_ref, dx_ref, dgamma_ref, dbeta_ref = _reference(x, dy, gamma, eps, axis)
    acb = _core.Prepared(x, axis, training=True).x3.shape
    assert bool(_kernels.fused_width(*acb, 2 * x.itemsize)) == (forward_path == "fused")
    y, mean, var = bnref.forward_train(x, gamma, beta, eps, axis)
    dx, dgamma, dbeta = bnref.backward(dy, x, gamma, mean, var, eps, axis)
    m = x.size // c
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13, atol=1e-13 * 7)
    np.testing.assert_allclose(var, var_ref, rtol=1e-12)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-11)
    # sums over m values of size ~1: rounding ~ m * 1e-16
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=0, atol=m * 1e-15)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0, atol=m * 1e-15)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-11)


def test_chunking_covers_every_row_once_with_no_empty_chunk():
    for a in list(range(0, 300)) + [1000, 4099]:
        for size_per_row in (1, 784, 8192):
            for width in (0, 600, 8192):
                nchunks, rows = _kernels.chunking(a, a * size_per_row, width)
                assert 1 <= nchunks <= _kernels.MAX_CHUNKS
                if a:
                    assert (nchunks - 1) * rows < a <= nchunks * rows, (a, size_per_row, width, nchunks, rows)


def test_fused_width_takes_what_stays_in_cache():
    # channels-first: one channel per item while a channel's values fit in FUSED_ITEM_BYTES
    assert _kernels.fused_width(64, 64, 3136, 4) == 1            # 64x64x56x56 float32: 0.8 MB a channel
    assert _kernels.fused_width(64, 64, 3136, 8) == 1            # ... backward (x and dy): 1.6 MB
    assert _kernels.fused_width(128, 64, 3136, 8) == 1           # 128x64x56x56 backward: 3.2 MB
    assert _kernels.fused_width(256, 64, 3136, 8) == 0           # 256x64x56x56 backward: 6.4 MB
    assert _kernels.fused_width(8, 3, 50176, 4) == 0             # 1.5 MB a channel, only 3 of them
    assert _kernels.fused_width(8, 3, 4096, 4) == 1              # 128 KB a channel: fused, however few
    # ... and the forward's groups of adjacent channels, while items stay within 4 MB, at least 8 of them
    group = _kernels.CHANNEL_GROUP
    assert _kernels.fused_width(32, 256, 784, 4, group) == 8     # 32x256x28x28: 0.8 MB an item, runs of 25 KB
    assert _kernels.fused_width(64, 64, 3136, 4, group) == 4     # 64x64x56x56: 3.2 MB an item
    assert _kernels.fused_width(128, 64, 3136, 4, group) == 2    # 128x64x56x56: 3.2 MB an item
    assert _kernels.fused_width(8, 3, 4096, 4, group) == 1       # too few channels to group
    assert _kernels.fused_width(4, 40, 25, 4, group) == 4        # 10 items of 4, not 5 of 8
    assert _kernels.fused_width(70, 19, 2000, 8, group) == 2     # float64 forward: 9 items of 2, then 1
    # channels-last: tiles of at least FUSED_MIN_LANES channels, at most LANES, about 8 of them
    assert _kernels.fused_width(100, 784, 1, 4) == 112           # the MNIST layer: 7 tiles
    assert _kernels.fused_width(256, 4096, 1, 4) == _kernels.LANES
    assert _kernels.fused_width(10, 20, 1, 4) == 20              # fewer channels than a tile
    assert _kernels.fused_width(200704, 64, 1, 4) == 0           # 64x56x56x64 NHWC: 51 MB a tile
    assert _kernels.fused_width(_kernels.FUSED_MAX_ROWS, 784, 1, 4) == 112
    assert _kernels.fused_width(_kernels.FUSED_MAX_ROWS + 1, 784, 1, 4) == 0   # many rows: split
    assert _kernels.fused_width(0, 5, 1, 4) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((100, 784), 1), ((7, 5, 9), 1), ((3, 300, 2), 1), ((50, 3), 1)])
def test_fused_forward_matches_the_split_one(shape, axis, dtype, monkeypatch):
    """The fused forward and the split one compute the same sums in a different order: they
    agree to float64 rounding, and y within the core tolerance of y (bnref.testing)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1e3).astype(dtype)
    c = shape[axis]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    assert _kernels.fused_width(*_core.Prepared(x, axis, training=True).x3.shape, x.itemsize)
    y, mean, var = bnref.forward_train(x, gamma, beta, 1e-5, axis)
    monkeypatch.setattr(_kernels, "fused_width", lambda *shape: 0)
    y_split, mean_split, var_split = bnref.forward_train(x, gamma, beta, 1e-5, axis)
    np.testing.assert_allclose(mean, mean_split, rtol=1e-15)
    np.testing.assert_allclose(var, var_split, rtol=1e-9)  # x - mean carries 1e3/2 * u64 per value
    tol = testing.tolerance("y", dtype, kappa=testing.condition_number(x, axis), m=x.size // c)
    np.testing.assert_allclose(y, y_split, rtol=0, atol=tol * float(np.abs(y_split).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((100, 784), 1), ((7, 5, 9), 1), ((3, 300, 2), 1), ((50, 3), 1)])
def test_fused_backward_matches_the_split_one(shape, axis, dtype, monkeypatch):
    """The same for the backward: the sums agree to float64 rounding, dx within its tolerance."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2 + 1e3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(dtype)
    _, mean, var = bnref.forward_train(x, gamma, gamma, 1e-5, axis)
    assert _kernels.fused_width(*_core.Prepared(x, axis, training=True).x3.shape, 2 * x.itemsize)
    dx, dgamma, dbeta = bnref.backward(dy, x, gamma, mean, var, 1e-5, axis)
    monkeypatch.setattr(_kernels, "fused_width", lambda *shape: 0)
    dx_split, dgamma_split, dbeta_split = bnref.backward(dy, x, gamma, mean, var, 1e-5, axis)
    m = x.size // c  # sums of m terms of size ~1 (dy) and ~3 (dy * xhat), in other orders
    ulp = np.finfo(dtype).eps  # both are rounded to the dtype at the end
    np.testing.assert_allclose(dbeta, dbeta_split, rtol=ulp, atol=m * 1e-15 * np.abs(dy).max())
    np.testing.assert_allclose(dgamma, dgamma_split, rtol=ulp, atol=m * 1e-13 * np.abs(dy).max())
    tol = testing.tolerance("dx", dtype, kappa=testing.condition_number(x, axis), m=x.size // c)
    np.testing.assert_allclose(dx, dx_split, rtol=0, atol=tol * float(np.abs(dx_split).max()) * m)
