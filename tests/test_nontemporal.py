"""The non-temporal path of ``combine`` (outputs of at least STREAM_MIN_BYTES, channels-last,
without ``v``) computes the same bits as the regular path, for every alignment of the output.

``stream_bytes=0`` forces it onto small arrays (the parallel kernel: the serial twin runs only
below PARALLEL_MIN_ELEMENTS, far below the threshold): every shape below takes the aligned 64-byte
lines, the partial lines at both ends of each block, and channel counts below, at and above a
line's 16 float32 (8 float64) values, so that a line's coefficients wrap around a row."""
import numpy as np
import pytest

from bnref import _kernels

SHAPES = [(100, 784, 1), (7, 300, 1), (1000, 7, 1), (3, 5000, 1), (50, 1, 1), (33, 16, 1), (40, 17, 1),
          (9, 64, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_u", [False, True], ids=["forward", "backward"])
def test_streamed_combine_equals_regular_bit_for_bit(shape, dtype, with_u):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    c = shape[1]
    mean, k_x, k_0, k_u = rng.standard_normal(c) + 100, rng.standard_normal(c), rng.standard_normal(c), \
        rng.standard_normal(c)
    extra = (x.copy() * 0.5, k_u) if with_u else ()
    expected = np.empty_like(x)
    assert x.nbytes < _kernels.STREAM_MIN_BYTES  # the default: regular stores
    _kernels.combine(x, mean, k_x, k_0, expected, *extra)
    buffer = np.empty(x.size + 16, dtype)
    for offset in range(16):  # every position of the output against a 64-byte line
        out = buffer[offset: offset + x.size].reshape(shape)
        out[...] = np.nan
        _kernels.combine(x, mean, k_x, k_0, out, *extra, stream_bytes=0)
        np.testing.assert_array_equal(out, expected, err_msg=f"offset {offset}")


def test_wrapped_coefficients_repeat_the_channels():
    np.testing.assert_array_equal(_kernels.wrapped(np.array([1.0, 2.0, 3.0]), 7), [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])


def test_an_output_not_aligned_to_its_dtype_takes_regular_stores():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 32, 1)).astype(np.float32)
    c = x.shape[1]
    mean, k_x, k_0 = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c)
    expected = np.empty_like(x)
    _kernels.combine(x, mean, k_x, k_0, expected)
    raw = bytearray(x.nbytes + 1)
    out = np.frombuffer(raw, dtype=np.float32, count=x.size, offset=1).reshape(x.shape)  # 1 byte off
    assert not out.flags.aligned
    _kernels.combine(x, mean, k_x, k_0, out, stream_bytes=0)  # would fault on an aligned store
    np.testing.assert_array_equal(out, expected)
