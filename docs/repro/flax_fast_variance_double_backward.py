"""Flax: with ``use_fast_variance=True`` (the default) the double backward of a constant channel is
wrong in float32 and in bfloat16 mixed precision (float32 statistics).

Run: ``python docs/repro/flax_fast_variance_double_backward.py`` (NumPy, JAX and Flax only).

``flax.linen.BatchNorm`` computes var = E[x^2] - E[x]^2 by default. Its derivative with respect
to x, 2 x / m - 2 E[x] / m, is a difference of two terms of size 2 |x| / m that cancels to
zero on a constant channel only up to float32 rounding, ~u32 |x|; the double backward
multiplies it by invstd^3 = eps^(-3/2) ~ 3e7 (eps = 1e-5). For a channel of three values 121
(exact in bfloat16), under ``jax.jit``, the double backward's gdy (the gradient of
<dx, ddx> + <dgamma, ddgamma> + <dbeta, ddbeta> with respect to dy) comes out wrong by up to 88 %
of its size in float32 and in Flax's mixed bfloat16 precision
(``dtype=jnp.bfloat16``, ``param_dtype=jnp.float32``); ``use_fast_variance=False`` (mean first,
then E[(x - mean)^2]) agrees with float64 to the rounding of gdy's dtype. Without jit the rounding errors
happen to cancel on this input. The cancellation of E[x^2] - E[x]^2 is
https://github.com/google/flax/issues/1491.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

jax.config.update("jax_enable_x64", True)

EPS = 1e-5
#: one well-conditioned channel and one constant channel of value 121 (exact in bfloat16)
X = np.array([[346.0, 121.0], [348.0, 121.0], [346.0, 121.0]])
SEEDS = range(8)


def double_backward(dtype, param_dtype, use_fast_variance, seed):
    """(gx, ggamma, gdy) as float64: the gradient of <dx, ddx> + <dgamma, ddgamma> + <dbeta, ddbeta>
    with respect to x, gamma and dy, for random gamma, beta, dy, ddx, ddgamma, ddbeta."""
    rng = np.random.default_rng(seed)
    gamma, beta, ddgamma, ddbeta = (rng.uniform(-2, 2, 2) for _ in range(4))
    # dy and ddx exact in bfloat16, so that every dtype sees the same numbers
    dy, ddx = (np.asarray(jnp.asarray(rng.standard_normal(X.shape), jnp.bfloat16), np.float64) for _ in range(2))
    bn = nn.BatchNorm(use_running_average=False, epsilon=EPS, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=use_fast_variance)
    stats = {"mean": jnp.zeros(2, param_dtype), "var": jnp.ones(2, param_dtype)}
    p = lambda a: jnp.asarray(a, param_dtype)  # noqa: E731

    def y(x, scale, bias):
        return bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                        mutable=["batch_stats"])[0]

    def pairing(x, scale, dy_):
        _, vjp = jax.vjp(y, x, scale, p(beta))
        dx, dgamma, dbeta = vjp(dy_)
        return ((dx * jnp.asarray(ddx, dtype)).sum() + (dgamma * p(ddgamma)).sum()
                + (dbeta * p(ddbeta)).sum())

    grads = jax.jit(jax.grad(pairing, argnums=(0, 1, 2)))(jnp.asarray(X, dtype), p(gamma), jnp.asarray(dy, dtype))
    return tuple(np.asarray(g, dtype=np.float64) for g in grads)  # jitted: as a training step runs


CONFIGS = {
    "float32, fast variance": (jnp.float32, jnp.float32, True),
    "bfloat16 x, float32 params, fast variance": (jnp.bfloat16, jnp.float32, True),
    "float32, two-pass": (jnp.float32, jnp.float32, False),
    "bfloat16 x, float32 params, two-pass": (jnp.bfloat16, jnp.float32, False),
}


def worst_gdy_error(dtype, param_dtype, use_fast_variance):
    """max over :data:`SEEDS` of |gdy - gdy_float64| / max|gdy_float64| on the constant channel."""
    worst = 0.0
    for seed in SEEDS:
        exact = double_backward(jnp.float64, jnp.float64, False, seed)[2][:, 1]
        got = double_backward(dtype, param_dtype, use_fast_variance, seed)[2][:, 1]
        worst = max(worst, float(np.max(np.abs(got - exact)) / np.max(np.abs(exact))))
    return worst


def main():
    import flax

    print(f"flax {flax.__version__}, jax {jax.__version__}; x = {X.tolist()}, eps = {EPS}")
    for name, config in CONFIGS.items():
        print(f"{name:45} gdy on the constant channel: worst relative error {worst_gdy_error(*config):.3g}")


if __name__ == "__main__":
    main()
