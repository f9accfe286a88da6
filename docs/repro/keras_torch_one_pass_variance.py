"""Keras 3 on the PyTorch backend: ``BatchNormalization`` takes the batch variance as
E[x^2] - E[x]^2, unclamped: a negative variance and NaN for data whose mean is large against its spread.

Run: ``python docs/repro/keras_torch_one_pass_variance.py`` (NumPy, PyTorch and Keras only; it sets
``KERAS_BACKEND=torch``, so run it in a fresh process).

The layer's statistics come from ``keras.ops.moments``, which on the torch backend is
``mean(square(x)) - square(mean(x))``; the TensorFlow and JAX backends take the variance in two
passes since https://github.com/keras-team/keras/pull/18795, the torch backend was left one-pass.
The layer computes in float32 for float32 and float64 inputs alike (Keras' ``result_type`` maps
64-bit floats to 32-bit), so both lose u32 mean^2 in the variance. For the channel
[-7960, -7959.75] (exact in float32; variance 0.015625, which ``torch.var_mean`` returns exactly)
``moments`` gives -4, ``rsqrt(-4 + eps)`` is NaN, and y is NaN for float32 and float64 x; the
moving variance is updated with the -4.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

EPS = 1e-3
MOMENTUM = 0.99
#: one channel of two values exact in float32, mean -7959.875, variance 0.015625
TWO_VALUES = np.array([[-7960.0], [-7959.75]])


def layer_results(dtype):
    """(y, new moving variance) of ``BatchNormalization`` in training on TWO_VALUES as ``dtype``,
    from a moving variance of 1 (both as float64 NumPy arrays)."""
    x = torch.from_numpy(TWO_VALUES.astype(dtype))
    layer = keras.layers.BatchNormalization(axis=-1, momentum=MOMENTUM, epsilon=EPS, dtype=dtype)
    layer.build(x.shape)
    y = layer(x, training=True)
    return (y.detach().double().numpy().ravel(),
            keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64))


def results():
    """Plain numbers: the variance from ``keras.ops.moments`` and from ``torch.var_mean`` on float32 x,
    y and the new moving variance for float32 and float64 x, and the exact y and moving variance."""
    x32 = torch.from_numpy(TWO_VALUES.astype(np.float32))
    exact_var = float(TWO_VALUES.var())
    out = {"moments variance": float(keras.ops.moments(x32, axes=[0])[1][0]),
           "torch.var_mean variance": float(torch.var_mean(x32, dim=0, unbiased=False)[0][0]),
           "exact variance": exact_var,
           "exact y": ((TWO_VALUES - TWO_VALUES.mean()) / np.sqrt(exact_var + EPS)).ravel().tolist(),
           "exact moving variance": MOMENTUM + (1 - MOMENTUM) * exact_var}
    for dtype in ("float32", "float64"):
        y, moving_variance = layer_results(dtype)
        out[f"{dtype} y"] = y.tolist()
        out[f"{dtype} moving variance"] = float(moving_variance[0])
    return out


def main():
    print(f"keras {keras.__version__} ({keras.backend.backend()} backend), torch {torch.__version__}; "
          f"x = {TWO_VALUES.ravel().tolist()}, eps = {EPS}, momentum = {MOMENTUM}")
    for name, value in results().items():
        print(f"  {name:28} {value}")


if __name__ == "__main__":
    main()
