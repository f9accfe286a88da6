"""PyTorch under ``torch.compile``: ``torch.nn.functional.batch_norm`` compiled by Inductor for the CPU.

Inductor decomposes batch norm into its own C++ kernels (built with the system's C++ compiler),
so this checks the decomposition and the generated code rather than ATen's kernels. Each of the
training forward, the eval forward and the running-statistics update is one function compiled
once per dtype with ``dynamic=True`` (new shapes reuse the code instead of recompiling; each rank
still compiles once); the backward is ``torch.autograd.grad`` through the compiled training
forward (AOTAutograd compiles its backward graph). eps and momentum are Python floats, which
Dynamo traces as symbolic values (``specialize_float=False``) rather than recompiling per value.

``double_backward`` is not provided: AOTAutograd's compiled backward is not differentiable
again ("torch.compile with aot_autograd does not currently support double backward").
Only float32 and float64: every extra dtype multiplies the compilations.
"""
from __future__ import annotations

import shutil

from bnref._threads import single_threaded
from bnref.adapters._torch import TorchCandidate

#: Dynamo's recompilations allowed per compiled function (ranks 2..5, static and dynamic shapes each)
RECOMPILE_LIMIT = 64


class TorchCompileCandidate(TorchCandidate):
    name = "torch-compile"
    dtypes = ("float32", "float64")
    double_backward = None

    def __init__(self):
        super().__init__()
        if shutil.which("g++") is None and shutil.which("c++") is None:
            raise ImportError("the torch-compile adapter needs a C++ compiler (g++ or c++) for Inductor's CPU code")
        self._compiled: dict = {}
        self.version = f"torch {self._torch.__version__} (torch.compile, Inductor CPU, dynamic=True)"

    def _compile(self, what, dtype, fn):
        key = (what, dtype)
        if key not in self._compiled:
            self._compiled[key] = self._torch.compile(fn, dynamic=True)
        return self._compiled[key]

    def _call(self, what, fn, *args):
        with self._torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self._compile(what, args[0].dtype, fn)(*args)

    def _y(self, x, gamma, beta, eps):
        def train(x_, gamma_, beta_, eps_):
            return self._F.batch_norm(x_, None, None, gamma_, beta_, training=True, eps=eps_)

        return self._call("train", train, x, gamma, beta, eps)

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        def evaluate(x_, gamma_, beta_, mean_, var_, eps_):
            return self._F.batch_norm(x_, mean_, var_, gamma_, beta_, training=False, eps=eps_)

        x_ = self._tensor(x)
        with self._torch.no_grad():
            return self._np(self._call("eval", evaluate, x_, self._param(gamma, x_), self._param(beta, x_),
                                       self._param(running_mean, x_), self._param(running_var, x_), eps))

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        def step(x_, mean_, var_, momentum_):
            # the compiled graph writes the new statistics back into mean_ and var_
            self._F.batch_norm(x_, mean_, var_, None, None, training=True, momentum=momentum_)
            return mean_, var_

        x_ = self._tensor(x)
        rm, rv = self._param(running_mean, x_), self._param(running_var, x_)
        with self._torch.no_grad():
            self._call("update", step, x_, rm, rv, momentum)
        return self._np(rm), self._np(rv)
