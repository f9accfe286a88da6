"""Flax: with ``use_fast_variance=True`` (the default) BatchNorm's batch variance, and with it y and
the running variance, are wrong for data whose mean is large against its spread, in float32 and in
float64; ``use_fast_variance=False`` is right. ``flax.linen.BatchNorm`` and ``flax.nnx.BatchNorm``
alike (they share the statistics code).

Run: ``python docs/repro/flax_fast_variance_forward.py`` (NumPy, JAX and Flax only).

The default computes var = max(0, E[x^2] - E[x]^2). Both means carry a rounding error of about
u * mean^2 (u the unit roundoff of the dtype), which the subtraction keeps while it cancels the
mean^2 itself: the error of var relative to var grows as u * (mean / std)^2, where the two-pass
var = E[(x - E[x])^2] loses u * (mean / std) at most. For the four values 10000, 10001, 10002, 10003
in float32 (exact; var 1.25) E[x^2] - E[x]^2 rounds to 0, which the clamp keeps: y is
(x - mean) / sqrt(eps), +-474 instead of +-1.34, and the running variance gets 0. In float64 the
same happens at 1e8 + (0, 1, 2, 3): var 2 instead of 1.25. Shifting a batch by a constant must not
change y; here y of 0, 1, 2, 3 and y of the same values shifted by 1e4 (float32) differ. At a milder
mean / std = 1300 (64 values of mean 346, std 0.27), float64 y is off by ~1e-11 of its scale, where
the two-pass variance stays at ~1e-14. The cancellation of E[x^2] - E[x]^2 is
https://github.com/google/flax/issues/1491 (negative variances, since clamped at 0; the error remains).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

jax.config.update("jax_enable_x64", True)

EPS = 1e-5
MOMENTUM = 0.9
STEPS = np.array([0.0, 1.0, 2.0, 3.0])
#: name -> (dtype, x of shape (N, 1)): a channel whose mean is large against its spread
INPUTS = {
    "float32, 1e4 + (0, 1, 2, 3)": ("float32", (1e4 + STEPS)[:, None]),
    "float64, 1e8 + (0, 1, 2, 3)": ("float64", (1e8 + STEPS)[:, None]),
    "float64, 64 values of mean 346, std 0.27": ("float64", np.random.default_rng(0).normal(346, 0.27, (64, 1))),
}


def flax_batch_norm(api, x, use_fast_variance):
    """(y, new running variance) of a training step of Flax's BatchNorm (``api``: "linen" or "nnx")
    on ``x``, under ``jax.jit``, with gamma 1, beta 0 and the running variance starting at 1."""
    channels, dtype = x.shape[-1], x.dtype
    ones = jnp.ones(channels, dtype)

    def linen_step(x_):
        bn = linen.BatchNorm(use_running_average=False, epsilon=EPS, momentum=MOMENTUM, dtype=dtype,
                             param_dtype=dtype, use_fast_variance=use_fast_variance)
        variables = {"params": {"scale": ones, "bias": 0 * ones}, "batch_stats": {"mean": 0 * ones, "var": ones}}
        y, updated = bn.apply(variables, x_, mutable=["batch_stats"])
        return y, updated["batch_stats"]["var"]

    def nnx_step(x_):
        bn = nnx.BatchNorm(channels, use_running_average=False, epsilon=EPS, momentum=MOMENTUM, dtype=dtype,
                           param_dtype=dtype, use_fast_variance=use_fast_variance, rngs=nnx.Rngs(0))
        bn.mean.set_value(0 * ones)  # the running statistics start as float32 otherwise
        bn.var.set_value(ones)
        return bn(x_), bn.var.get_value()

    y, running_var = jax.jit(linen_step if api == "linen" else nnx_step)(x)
    return np.asarray(y, np.float64), np.asarray(running_var, np.float64)


def exact_batch_norm(x):
    """(y, new running variance) in extended precision: two-pass statistics of x's values."""
    x = np.asarray(x, np.longdouble)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    y = (x - mean) / np.sqrt(var + np.longdouble(EPS))
    return np.asarray(y, np.float64), np.asarray(MOMENTUM + (1 - MOMENTUM) * var, np.float64)


def errors(name, api, use_fast_variance):
    """(max |y - exact y| / max |exact y|, |running var - exact running var|) for the input ``name``."""
    dtype, values = INPUTS[name]
    x = jnp.asarray(values, dtype)
    y, running_var = flax_batch_norm(api, x, use_fast_variance)
    exact_y, exact_var = exact_batch_norm(np.asarray(x))
    return (float(np.max(np.abs(y - exact_y)) / np.max(np.abs(exact_y))),
            float(np.max(np.abs(running_var - exact_var))))


def main():
    import flax

    print(f"flax {flax.__version__}, jax {jax.__version__}; eps = {EPS}, momentum = {MOMENTUM}")
    for name, (dtype, values) in INPUTS.items():
        exact_y, exact_var = exact_batch_norm(np.asarray(jnp.asarray(values, dtype)))
        print(f"\n{name}: exact y[:4] = {np.round(exact_y[:4, 0], 6)}, exact running var {exact_var[0]:.6g}")
        for api in ("linen", "nnx"):
            for fast in (True, False):
                y, running_var = flax_batch_norm(api, jnp.asarray(values, dtype), fast)
                y_err, var_err = errors(name, api, fast)
                print(f"  {api:5} use_fast_variance={fast!s:5}: y[:4] = {np.round(y[:4, 0], 6)}, "
                      f"running var {running_var[0]:.6g}; relative error of y {y_err:.2g}, "
                      f"absolute error of running var {var_err:.2g}")
    shifted = flax_batch_norm("linen", jnp.asarray(INPUTS["float32, 1e4 + (0, 1, 2, 3)"][1], "float32"), True)[0]
    unshifted = flax_batch_norm("linen", jnp.asarray(STEPS[:, None], "float32"), True)[0]
    print(f"\nshift: float32 y of (0, 1, 2, 3) = {np.round(unshifted[:, 0], 4)}, of 1e4 + (0, 1, 2, 3) = "
          f"{np.round(shifted[:, 0], 4)}")


if __name__ == "__main__":
    main()
