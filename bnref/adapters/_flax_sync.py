"""Flax cross-replica batch norm: ``flax.linen.BatchNorm(axis_name=...)`` under ``jax.pmap`` on host CPU devices.

JAX is given :data:`DEVICES` host CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``),
which must be set before JAX starts its CPU backend. When JAX is already running in this process with
fewer devices, the candidate lives in a child process (``python -m bnref.adapters._flax_sync``) that
sets the flag, and its methods are calls over a pipe.

* ``forward_train``/``backward``: the batch split evenly over the largest ``d <= 4`` dividing it, one
  shard per device -- the cross-replica path on the split Flax is made for.
* ``forward_train_sharded``/``backward_sharded``: the shards as given, one per device. Shards of
  different sizes are padded to the largest and the padding is left out of the statistics with
  Flax's ``mask`` argument (its way to exclude positions); equal shards run without a mask.
* Gradients: ``jax.vjp`` inside the pmapped function (the transpose of ``pmean`` gathers every
  device's cotangent), and ``dgamma``, ``dbeta`` summed over the devices with ``psum``.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import weakref

import numpy as np

DEVICES = 4
AXIS = "shards"
_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"


def _jax_started() -> bool:
    """Whether JAX's backends are up in this process (then the device count can no longer change)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):  # a JAX without this internal: assume the worst
        return True


class _LocalFlaxSync:
    """The candidate in a process whose JAX has :data:`DEVICES` CPU devices."""

    def __init__(self):
        from bnref.adapters._jax import enable_x64

        jax = enable_x64()
        import flax
        import flax.linen as nn
        import jax.numpy as jnp
        from jax import lax

        if jax.local_device_count() < DEVICES:
            raise RuntimeError(f"JAX has {jax.local_device_count()} devices, {DEVICES} needed ({_FLAG})")
        self._jax, self._jnp, self._nn, self._lax = jax, jnp, nn, lax
        self.version = f"flax {flax.__version__}, jax {jax.__version__}, pmap over {DEVICES} CPU devices"
        self._compiled = {}

    # ------------------------------------------------------------------ the pmapped Flax module

    def _y(self, x, gamma, beta, eps, mask):
        bn = self._nn.BatchNorm(use_running_average=False, axis=-1, epsilon=eps, axis_name=AXIS,
                                dtype=x.dtype, param_dtype=x.dtype)
        channels = x.shape[-1]
        variables = {"params": {"scale": gamma, "bias": beta},
                     "batch_stats": {"mean": self._jnp.zeros(channels, x.dtype),
                                     "var": self._jnp.ones(channels, x.dtype)}}
        y, _ = bn.apply(variables, x, mask=mask, mutable=["batch_stats"])
        return y

    def _grads(self, x, gamma, beta, eps, mask, dy):
        _, vjp = self._jax.vjp(lambda x_, g_, b_: self._y(x_, g_, b_, eps, mask), x, gamma, beta)
        dx, dgamma, dbeta = vjp(dy)
        return dx, self._lax.psum(dgamma, AXIS), self._lax.psum(dbeta, AXIS)

    def _pmapped(self, name, masked):
        key = (name, masked)
        if key not in self._compiled:
            body = {"forward": lambda x, g, b, e, m: self._y(x, g, b, e, m),
                    "backward": self._grads}[name]
            in_axes = (0, None, None, None, 0 if masked else None) + ((0,) if name == "backward" else ())
            self._compiled[key] = self._jax.pmap(body, axis_name=AXIS, in_axes=in_axes)
        return self._compiled[key]

    # ------------------------------------------------------------------ shards <-> padded device arrays

    @staticmethod
    def _pad(arrays, rows):
        """``(S, rows, ...)``: each shard in its slot, zeros after it."""
        first = arrays[0]
        out = np.zeros((len(arrays), rows, *first.shape[1:]), dtype=first.dtype)
        for i, a in enumerate(arrays):
            out[i, :len(a)] = a
        return out

    def _run(self, name, xs, gamma, beta, eps, dys=None):
        sizes = [len(x) for x in xs]
        if not 1 <= len(xs) <= DEVICES:
            raise ValueError(f"flax-sync runs 1 to {DEVICES} shards (one per device); got {len(xs)}")
        rows = max(sizes)
        masked = len(set(sizes)) > 1
        mask = None
        if masked:
            mask = np.zeros((len(xs), rows) + (1,) * (xs[0].ndim - 1), dtype=bool)
            for i, n in enumerate(sizes):
                mask[i, :n] = True
        dtype = xs[0].dtype
        args = [self._pad(xs, rows), np.asarray(gamma), np.asarray(beta), np.asarray(eps, dtype), mask]
        if dys is not None:
            args.append(self._pad(dys, rows))
        out = self._pmapped(name, masked)(*args)
        if name == "forward":
            return [np.array(out[i, :n]) for i, n in enumerate(sizes)]
        dx, dgamma, dbeta = out
        return [np.array(dx[i, :n]) for i, n in enumerate(sizes)], np.array(dgamma[0]), np.array(dbeta[0])

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return self._run("forward", xs, gamma, beta, eps)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        return self._run("backward", xs, gamma, beta, eps, dys)


def _even_split(x) -> list[np.ndarray]:
    """``x`` cut along the batch axis into the most equal shards (at most :data:`DEVICES`)."""
    d = max(k for k in range(1, DEVICES + 1) if len(x) % k == 0)
    return np.split(x, d)


def _close(proc) -> None:
    """End the child: closing its stdin ends its loop."""
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _ChildFlaxSync:
    """:class:`_LocalFlaxSync` in a child process started with the device flag."""

    def __init__(self):
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip())
        self._proc = subprocess.Popen([sys.executable, "-m", "bnref.adapters._flax_sync"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        weakref.finalize(self, _close, self._proc)
        self.version = self._call("version")

    def _call(self, method, *args):
        pickle.dump((method, args), self._proc.stdin)
        self._proc.stdin.flush()
        try:
            ok, value = pickle.load(self._proc.stdout)
        except EOFError:
            raise RuntimeError(f"the flax-sync child process exited ({self._proc.wait()})") from None
        if not ok:
            raise value
        return value

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return self._call("forward_train_sharded", xs, gamma, beta, eps)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        return self._call("backward_sharded", xs, gamma, beta, eps, dys)


class FlaxSyncCandidate:
    """The oracle's candidate: Flax cross-replica BN over 4 host CPU devices (see the module docstring)."""

    name = "flax-sync"
    dtypes = ("float32", "float64")
    channel_axis = -1
    max_shards = DEVICES

    def __init__(self):
        if not _jax_started():
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}".strip()
        try:
            self._impl = _LocalFlaxSync()
        except RuntimeError:  # JAX already up with fewer devices: run in a child process
            self._impl = _ChildFlaxSync()
        self.version = self._impl.version

    def forward_train(self, x, gamma, beta, eps):
        return np.concatenate(self._impl.forward_train_sharded(_even_split(x), gamma, beta, eps))

    def backward(self, x, gamma, beta, eps, dy):
        dxs, dgamma, dbeta = self._impl.backward_sharded(_even_split(x), gamma, beta, eps, _even_split(dy))
        return np.concatenate(dxs), dgamma, dbeta

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return self._impl.forward_train_sharded(list(xs), gamma, beta, eps)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        return self._impl.backward_sharded(list(xs), gamma, beta, eps, list(dys))


def _serve() -> None:
    """Child side of :class:`_ChildFlaxSync`: answer pickled calls on stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by JAX goes to stderr, not into the pickle stream
    impl = _LocalFlaxSync()
    while True:
        try:
            method, args = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            result = (True, impl.version if method == "version" else getattr(impl, method)(*args))
        except Exception as exc:  # sent back and raised in the parent
            result = (False, exc)
        pickle.dump(result, out)
        out.flush()


if __name__ == "__main__":
    _serve()
