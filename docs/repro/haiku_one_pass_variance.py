"""Haiku: ``hk.BatchNorm`` in training takes the batch variance as E[x^2] - E[x]^2, unclamped:
NaN in float32 for data whose mean is large against its spread, and errors of u kappa^2 in float64.

Run: ``python docs/repro/haiku_one_pass_variance.py`` (NumPy, JAX and Haiku only).

``haiku.BatchNorm`` computes ``mean_of_squares - square(mean)``. Both terms are about mean^2, so
their difference carries an absolute error of about u mean^2 (u the unit roundoff), i.e. a relative
error u kappa^2 in the variance, kappa = |mean| / std; the two-pass variance E[(x - mean)^2] loses
only u kappa. In float32 the difference can come out negative and larger than eps, and
``rsqrt(var + eps)`` is NaN: the channel [-7960, -7959.75] (values exact in float32, variance
0.015625) gives var = -4 and y = NaN; 256 values of mean 1000 and std 0.01 turn a channel NaN as
well. In float64 (64-bit mode) y at mean 346, std 0.265 is off by 10^3 to 10^4 times what the
two-pass formula loses. Flax's default has the same cancellation:
https://github.com/google/flax/issues/1491.
"""
import jax

jax.config.update("jax_enable_x64", True)

import haiku as hk  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

EPS = 1e-5
U64 = 2.0 ** -53
#: one channel of two values exact in float32, mean -7959.875, variance 0.015625
TWO_VALUES = np.array([[-7960.0], [-7959.75]], np.float32)


def haiku_y(x):
    """y (float64) of a fresh ``hk.BatchNorm`` in training (gamma = 1, beta = 0) on x of x's dtype."""
    def layer(x_):
        return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9, eps=EPS)(x_, is_training=True)

    transformed = hk.transform_with_state(layer)
    x = jnp.asarray(x)
    params, state = transformed.init(None, x)
    return np.asarray(transformed.apply(params, state, None, x)[0], np.float64)


def two_pass_y(x):
    """(x - mean) / sqrt(E[(x - mean)^2] + eps) in float64, for the same values."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    return centred / np.sqrt((centred ** 2).mean(axis=0) + EPS)


def offset_float32_nan_channels(seed=0):
    """Which of 3 channels of 256 float32 values (mean 1000, std 0.01) come back NaN."""
    x = np.random.default_rng(seed).normal(1000.0, 0.01, (256, 3)).astype(np.float32)
    return np.isnan(haiku_y(x)).any(axis=0)


def float64_errors(seed):
    """(|y - two-pass y| max, u64 kappa) for two float64 values per channel, mean 346, std 0.265."""
    x = np.random.default_rng(seed).normal(346.2, 0.265, (2, 3))
    kappa = np.max(np.abs(x)) / np.sqrt(x.var(axis=0) + EPS).min()
    return float(np.max(np.abs(haiku_y(x) - two_pass_y(x)))), float(U64 * kappa)


def main():
    print(f"dm-haiku {hk.__version__}, jax {jax.__version__}; eps = {EPS}")
    print(f"float32 x = {TWO_VALUES.ravel().tolist()}: haiku y = {haiku_y(TWO_VALUES).ravel().tolist()}, "
          f"two-pass y = {np.round(two_pass_y(TWO_VALUES), 6).ravel().tolist()}")
    print(f"float32, 256 values of mean 1000, std 0.01: NaN channels {offset_float32_nan_channels().tolist()}")
    for seed in range(3):
        error, two_pass_bound = float64_errors(seed)
        print(f"float64, mean 346, std 0.265 (seed {seed}): |y - two-pass y| = {error:.3g}, "
              f"u64 kappa = {two_pass_bound:.3g}")


if __name__ == "__main__":
    main()
