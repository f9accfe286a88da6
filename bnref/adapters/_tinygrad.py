"""tinygrad: ``tinygrad.nn.BatchNorm`` (channels-first), gradients by ``Tensor.gradient``.

One module per call, built as ``nn.BatchNorm(C, eps=eps, momentum=momentum)`` with its
``weight``, ``bias``, ``running_mean`` and ``running_var`` replaced by the oracle's arrays in x's
dtype (what casting a model's state to half gives; ``nn.BatchNorm`` itself makes them float32).
Training mode is tinygrad's ``TRAINING`` context variable: ``forward_train``, ``backward``,
``double_backward`` and ``update_running`` run under ``Context(TRAINING=1)``, ``forward_eval``
under ``Context(TRAINING=0)``. The running statistics are the module's own ``assign`` updates,
realized after each call (``update_running_steps`` realizes them after every step, as a training
loop does). ``double_backward`` differentiates the pairing of the first gradients with the
directions once more with ``Tensor.gradient`` (tinygrad's gradients are graphs of their own).

The device is tinygrad's CPU device (``DEV=CPU``, declared in :attr:`environment`), which
compiles every kernel with ``clang`` (``apt-get install clang``; ``CC`` names another one).
bfloat16 kernels need a clang that knows ``__bf16`` on x86-64 (clang 17 or later, e.g.
``CC=clang-19``): the adapter asks the compiler to build a bfloat16 function when it starts and
declares bfloat16 only where it can. tinygrad compiles a kernel per shape and constant, eps
included; a new (shape, eps) costs 1-2 s of Python graph rewriting and compilation, a repeated
one 0.1 s, so an oracle run takes minutes per dtype.
"""
from __future__ import annotations

import os
import subprocess

import ml_dtypes
import numpy as np

#: ml_dtypes' bfloat16: it crosses into tinygrad bit for bit, as uint16
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
#: the dtypes tinygrad's CPU device computes in; bfloat16 only with a clang that has __bf16
DTYPES = ("float32", "float64", "float16", "bfloat16")


#: C sources the CPU device's compiler must build: any kernel at all, and bfloat16 arithmetic
PROBES = {"float32": "float twice(float x) { return x * 2.0f; }\n",
          "bfloat16": "__bf16 twice(__bf16 x) { return (__bf16)((float)x * 2.0f); }\n"}


def compiler() -> str:
    """The C compiler tinygrad's CPU device runs: ``CC``, else ``clang``."""
    return os.environ.get("CC", "clang")


def compiles(source: str) -> bool:
    """Whether :func:`compiler` builds the C ``source`` for this machine.

    Asked of the compiler itself, not through tinygrad, whose kernel cache would answer for the
    compiler that filled it.
    """
    try:
        subprocess.run([compiler(), "-c", "-x", "c", "-march=native", "-", "-o", os.devnull], input=source.encode(),
                       capture_output=True, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class TinygradCandidate:
    name = "tinygrad"
    channel_axis = 1
    environment = {"DEV": "CPU"}

    def __init__(self):
        for var, value in self.environment.items():
            os.environ.setdefault(var, value)
        from importlib.metadata import version
        from tinygrad import Tensor, dtypes, nn
        from tinygrad.helpers import Context

        self._Tensor, self._dtypes, self._nn, self._Context = Tensor, dtypes, nn, Context
        self._device = self.environment["DEV"]
        if not compiles(PROBES["float32"]):
            raise ImportError(f"tinygrad's {self._device} device compiles its kernels with {compiler()!r}, which cannot "
                              f"compile C here (install clang, or name a C compiler in CC)")
        self.dtypes = DTYPES if compiles(PROBES["bfloat16"]) else tuple(d for d in DTYPES if d != "bfloat16")
        self.version = (f"tinygrad {version('tinygrad')} ({self._device}, CC={compiler()}"
                        f"{'' if 'bfloat16' in self.dtypes else '; no bfloat16: this compiler has no __bf16'})")

    def _tensor(self, a):
        """A realized tinygrad tensor holding a copy of the NumPy array ``a`` (bfloat16 included)."""
        a = np.array(a)  # a copy: tinygrad never sees the caller's memory
        if a.dtype == BFLOAT16:
            return self._Tensor(a.view(np.uint16), device=self._device).bitcast(self._dtypes.bfloat16).realize()
        return self._Tensor(a, device=self._device).realize()

    def _np(self, t):
        """A NumPy copy of ``t`` in its own dtype (tinygrad hands bfloat16 out as float32, exactly)."""
        out = t.numpy()
        return out.astype(BFLOAT16) if t.dtype == self._dtypes.bfloat16 else out.copy()

    def _module(self, x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1):
        """``nn.BatchNorm`` for x's channels, its parameters and running statistics in x's dtype."""
        channels = x.shape[1]
        bn = self._nn.BatchNorm(channels, eps=eps, momentum=momentum)
        ones, zeros = np.ones(channels), np.zeros(channels)
        for attr, value, default in (("weight", gamma, ones), ("bias", beta, zeros),
                                     ("running_mean", running_mean, zeros), ("running_var", running_var, ones)):
            setattr(bn, attr, self._tensor(np.asarray(default if value is None else value).astype(x.dtype)))
        return bn

    def _train(self, bn, x):
        with self._Context(TRAINING=1):
            return bn(x)

    def forward_train(self, x, gamma, beta, eps):
        return self._np(self._train(self._module(x, gamma, beta, eps), self._tensor(x)))

    def _gradients(self, x, gamma, beta, eps, dy_):
        """(x_, bn, first gradients (dx, dgamma, dbeta)) as tinygrad graphs."""
        bn, x_ = self._module(x, gamma, beta, eps), self._tensor(x)
        y = self._train(bn, x_)
        return x_, bn, y.gradient(x_, bn.weight, bn.bias, gradient=dy_)

    def backward(self, x, gamma, beta, eps, dy):
        _, _, grads = self._gradients(x, gamma, beta, eps, self._tensor(dy))
        return tuple(self._np(g) for g in grads)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        bn = self._module(x, gamma, beta, eps, running_mean, running_var)
        with self._Context(TRAINING=0):
            return self._np(bn(self._tensor(x)))

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        bn = self._module(xs[0], None, None, 1e-5, running_mean, running_var, momentum)
        for x in xs:
            self._train(bn, self._tensor(x)).realize()
            self._Tensor.realize(bn.running_mean, bn.running_var)
        return self._np(bn.running_mean), self._np(bn.running_var)

    def update_running(self, x, running_mean, running_var, momentum):
        return self.update_running_steps([x], running_mean, running_var, momentum)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        dy_ = self._tensor(dy)
        x_, bn, grads = self._gradients(x, gamma, beta, eps, dy_)
        directions = [self._tensor(d) for d in (ddx, ddgamma, ddbeta)]
        pairing = sum((g * d).sum() for g, d in zip(grads, directions))
        return tuple(self._np(g) for g in pairing.gradient(x_, bn.weight, dy_))
