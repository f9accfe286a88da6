r"""``bnref bench``: bnref, plain NumPy and PyTorch CPU side by side, in one process. Not a test.

For every case (shape, memory layout, dtype, thread count) it measures the median time of
repeated calls of

* ``bnref`` -- :func:`bnref.forward_train` (fwd) and ``forward_train`` + :func:`bnref.backward`
  (fwd+bwd), allocating fresh outputs, and again with ``out=`` buffers reused across calls;
* ``numpy`` -- the textbook formulas in plain NumPy (:func:`numpy_forward`, :func:`numpy_backward`;
  not for the 16-bit formats, :func:`has_numpy_baseline`);
* ``torch`` -- ``torch.nn.functional.batch_norm(training=True)`` under ``no_grad`` (fwd) and
  forward + ``torch.autograd.grad`` (fwd+bwd), when torch is importable, on the same memory in the
  same dtype (bfloat16 as ``torch.bfloat16``, :func:`torch_tensor`);

all with the same gamma and beta: float32 for float32 and the 16-bit formats (half activations,
float32 parameters, as under mixed precision), float64 for float64 (:func:`param_dtype`);

and, at the same size and thread count, the machine's limits:

* ``ceiling`` -- a Numba ``prange`` loop ``y = a*x + b`` over a same-size buffer (regular stores):
  the streaming ceiling of a kernel that reads one array and writes another;
* ``copy`` -- ``numpy.copyto`` of a same-size buffer (memcpy, one thread).

(both over uint16 for the 16-bit formats: the same bytes, :func:`limit_calls`).

Effective bandwidth uses the minimal-traffic model: a fused training forward must read x and
write y (2|x| bytes), forward+backward at least 5|x| (x, y; x, dy, dx), with |x| in bytes
(``x.nbytes``: half of float32's for the 16-bit formats). All calls of a case,
the limits included, are sampled round-robin, so a change of load hits them alike. Each row
reports median (and min) ms, GB/s under that model, the fraction of the ceiling, the speed-up over torch
(``torch_ms / ms``) and the peak extra memory of one call beyond the arrays it returns.
A cold-start time (a fresh interpreter importing bnref and making its first calls, with
Numba's on-disk cache warm) is measured in a subprocess.

Threads: ``numba.set_num_threads`` and ``torch.set_num_threads`` get the same count;
NumPy's elementwise ufuncs and reductions are single-threaded whatever the count
(``threadpoolctl``, when installed, also pins its BLAS/OpenMP pools, which BN does not use).
Numba (threading layer ``omp``) and PyTorch each bring an OpenMP runtime (two copies of libgomp
in one process), whose idle threads spin after every parallel region, by default for up to
300 000 spins. Left spinning, the two sets of threads take the cores from each other (measured
under a load average of 9: bnref fwd+bwd on 32x256x28x28 channels-last 288 ms with spinning,
33 ms without). Not spinning at all (``OMP_WAIT_POLICY=PASSIVE``) costs a sleeping thread's
wake-up, about 80 us on a 2-core VM, at the start of every parallel region of either
library (bnref 256x4096 float32 forward: 1.0 ms passive, 0.64 ms with a short spin). ``main``
therefore sets ``GOMP_SPINCOUNT`` to :data:`~bnref._threads.SPIN_COUNT` (spin about 0.1-0.3 ms,
then sleep), for both libraries alike, unless the environment sets ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``, before either runtime starts (:func:`bnref._threads.short_openmp_spin`).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

import bnref
from bnref import _core, _kernels
from bnref._progress import Progress
from bnref._table import render
from bnref.dtypes import KERNEL_NAMES, dtype_info
from bnref._threads import short_openmp_spin

EPS = 1e-5
#: bytes moved per |x| under the minimal-traffic model
TRAFFIC = {"fwd": 2, "fwd+bwd": 5}
#: timed samples per measurement unless --repeats says otherwise
DEFAULT_REPEATS = 15
#: ... but a case whose rounds are short takes more of them (up to :data:`MAX_ROUNDS_FACTOR` x),
#: until its rounds take about this many seconds in all: the small shapes' medians moved most
#: between runs (one 2 ms burst of the VM's noise is one sample in fifteen), and their extra
#: rounds cost about a second
MIN_CASE_SECONDS = 1.5
MAX_ROUNDS_FACTOR = 10


@dataclass(frozen=True)
class Case:
    """One benchmark input: ``shape`` is logical (N, C, *spatial); ``layout`` is its memory order."""

    shape: tuple[int, ...]
    layout: str  # "NC", "NCHW" (channels-first) or "NHWC" (channels-last)
    dtype: str

    @property
    def label(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {self.layout}"


SHAPES = [((100, 784), "NC"), ((256, 4096), "NC"),
          ((64, 64, 56, 56), "NCHW"), ((64, 64, 56, 56), "NHWC"),
          ((32, 256, 28, 28), "NCHW"), ((32, 256, 28, 28), "NHWC")]
QUICK_SHAPES = [((100, 784), "NC"), ((32, 256, 28, 28), "NCHW"), ((32, 256, 28, 28), "NHWC")]


# ---------------------------------------------------------------- the plain NumPy implementation

def numpy_forward(x, gamma, beta, eps, axis):
    """Textbook training forward: returns (y, mean, invstd), statistics with keepdims."""
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    return (x - mean) * invstd * gamma.reshape(bshape) + beta.reshape(bshape), mean, invstd


def numpy_backward(dy, x, gamma, mean, invstd, axis):
    """Textbook backward: dx = gamma*invstd*(dy - mean(dy) - xhat*mean(dy*xhat)), dgamma, dbeta."""
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    m = x.size // x.shape[axis]
    xhat = (x - mean) * invstd
    dbeta = dy.sum(axis=axes, keepdims=True)
    dgamma = (dy * xhat).sum(axis=axes, keepdims=True)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    dx = gamma.reshape(bshape) * invstd * (dy - dbeta / m - xhat * dgamma / m)
    return dx, dgamma.ravel(), dbeta.ravel()


# ---------------------------------------------------------------- the machine's limits

@njit(cache=True, parallel=True, nogil=True)
def _stream_affine(x, a, b, y):
    """The streaming ceiling: y = a*x + b over flat buffers, regular stores."""
    for i in prange(x.shape[0]):
        y[i] = a * x[i] + b


#: pieces per bound loop below: enough for 2-16 threads to share evenly
_PIECES = 64


@njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc"})
def _read_sum(x, y):
    """A read-only bound: sum of x (and of y, unless it is None) over flat buffers, float64,
    in fixed pieces (each sliced from 0, so that the loop vectorizes)."""
    n = x.shape[0]
    per = -(-n // _PIECES)
    partial = np.zeros(_PIECES)
    for t in prange(_PIECES):
        lo, hi = min(n, t * per), min(n, (t + 1) * per)
        xs = x[lo:hi]
        ys = xs if y is None else y[lo:hi]
        total = 0.0
        for i in range(hi - lo):
            total += xs[i]
            if y is not None:
                total += ys[i]
        partial[t] = total
    return partial.sum()


@njit(cache=True, parallel=True, nogil=True)
def _stream_widen(x, out):
    """The bound of a pass that reads 16-bit values and writes them as float32: out = x (uint16
    converted to float32, a vector instruction), over flat buffers."""
    for i in prange(x.shape[0]):
        out[i] = x[i]


@njit(cache=True, parallel=True, nogil=True)
def _stream_two(x, a, y, b, out):
    """The bound of an elementwise pass over two inputs: out = a*x + b*y, regular stores."""
    for i in prange(x.shape[0]):
        out[i] = a * x[i] + b * y[i]


# ---------------------------------------------------------------- timing

def sample_ms(calls: dict, repeats: int, min_sample_s: float = 2e-3, settle_s: float = 5e-4,
              min_total_s: float = 0.0) -> dict:
    """Per key: (median, min) over ``repeats`` samples of one call's time in ms (more rounds, up
    to :data:`MAX_ROUNDS_FACTOR` times as many, where ``repeats`` rounds would take less than
    ``min_total_s``, as estimated from the calibration calls).

    The calls are sampled round-robin (one sample of each, ``repeats`` times, in a new order each
    round), so a change in the machine's load while the case runs hits every implementation and
    the ceiling alike, and no call always runs after the same neighbor.
    Short calls are batched so that a sample lasts at least ``min_sample_s``; before each sample
    the machine idles for ``settle_s``, longer than an OpenMP thread spins (``SPIN_COUNT``).
    """
    number = {}
    round_s = 0.0
    for key, fn in calls.items():
        fn()  # warm-up: compilation, first touch of reused buffers
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        number[key] = max(1, int(min_sample_s / max(once, 1e-9)))
        round_s += settle_s + number[key] * once
    if min_total_s > 0:
        repeats = max(repeats, min(MAX_ROUNDS_FACTOR * repeats, math.ceil(min_total_s / max(round_s, 1e-9))))
    samples: dict = {key: [] for key in calls}
    keys = list(calls)
    shuffle = np.random.default_rng(0)
    for _ in range(repeats):
        # a new order each round (a fixed seed), so that no call always follows the same
        # neighbor: the one before leaves its data, dirty or clean, in the caches this one meets
        for key in (keys[i] for i in shuffle.permutation(len(keys))):
            fn = calls[key]
            # let the previous call's OpenMP threads stop spinning (GOMP_SPINCOUNT) before this
            # one starts, so that two libraries' thread pools never compete inside a sample; a
            # busy wait, since a sleep lets this VM's CPUs idle and every call after it is slower
            settle_until = time.perf_counter() + settle_s
            while time.perf_counter() < settle_until:
                pass
            start = time.perf_counter()
            for _ in range(number[key]):
                fn()
            samples[key].append((time.perf_counter() - start) / number[key] * 1e3)
    return {key: (float(np.median(v)), float(np.min(v))) for key, v in samples.items()}


def peak_extra_bytes(fn) -> int:
    """Peak bytes that NumPy allocates during one call (tracemalloc), beyond what the call returns
    (the peak minus what is still allocated when the call has returned, i.e. its new outputs).

    NumPy reports its data buffers to tracemalloc. Numba's kernel scratch (O(chunks*C) float64
    partial sums) comes from Numba's runtime allocator, which tracemalloc does not see.
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()  # noqa: F841 -- held so that the outputs count as "still allocated"
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak - held)


# ---------------------------------------------------------------- inputs and implementations

def param_dtype(dtype: str) -> str:
    """The dtype of gamma and beta with x of ``dtype``, for bnref and torch alike: float32 where
    x's row of :data:`bnref.dtypes.DTYPES` allows it (float32, and the half formats: half
    activations with float32 parameters, as under mixed precision), else x's own (float64)."""
    allowed = dtype_info(dtype).parameters or (dtype,)
    return "float32" if "float32" in allowed else dtype


def make_inputs(case: Case, seed: int = 0) -> dict:
    """x, dy (in the case's memory layout), gamma, beta (in :func:`param_dtype`) and the channel
    axis for bnref/NumPy.

    Every value is drawn in float32 and rounded once to the case's dtype (ml_dtypes' bfloat16
    included); gamma and beta are rounded to the case's dtype too before they are stored in
    their own, so a half case holds the same numbers whichever parameter dtype it is given.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    channels = case.shape[1]
    x = (rng.standard_normal(case.shape, dtype=np.float32) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(case.shape, dtype=np.float32).astype(dtype)
    axis = 1
    if case.layout == "NHWC":  # store channels last; bnref and NumPy see (N, H, W, C), axis -1
        x, dy, axis = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1
    params = np.dtype(param_dtype(case.dtype))
    gamma = (1 + 0.1 * rng.standard_normal(channels)).astype(dtype).astype(params)
    beta = (0.1 * rng.standard_normal(channels)).astype(dtype).astype(params)
    return dict(x=x, dy=dy, gamma=gamma, beta=beta, axis=axis)


def is_16bit(dtype) -> bool:
    """Whether ``dtype`` is one of the 16-bit formats (float16, bfloat16)."""
    return np.dtype(dtype).itemsize == 2


def has_numpy_baseline(dtype: str) -> bool:
    """Whether the plain-NumPy rows run for ``dtype``: not for the 16-bit formats, which NumPy
    computes in half precision op by op (float16) or through ml_dtypes' bfloat16 ufuncs, so its
    mean and variance would not be batch norm's to half precision, nor its time a baseline
    anyone uses."""
    return not is_16bit(dtype)


def bit_view(arr: np.ndarray) -> np.ndarray:
    """A 16-bit float array as its uint16 bit patterns (the same memory); other arrays as they are.
    The machine's limits move bits, not values, and neither NumPy (bfloat16) nor Numba (either
    16-bit format) has arithmetic for the half formats."""
    return arr.view(np.uint16) if is_16bit(arr.dtype) else arr


def affine_constants(flat: np.ndarray) -> tuple:
    """(a, b) for the bound loops ``a*x + b`` over ``flat`` (a float array or :func:`bit_view`'s
    uint16), in its own type, so that Numba compiles the loop for that type alone."""
    kind = flat.dtype.type
    return (kind(3), kind(1)) if flat.dtype.kind == "u" else (kind(1.1), kind(0.5))


def bnref_calls(inp: dict) -> dict:
    """op name -> zero-argument callable returning the call's outputs."""
    x, dy, gamma, beta, axis = inp["x"], inp["dy"], inp["gamma"], inp["beta"], inp["axis"]
    y_buf, dx_buf = np.empty_like(x), np.empty_like(x)

    def fwd_bwd(out_y=None, out_dx=None):
        y, mean, var = bnref.forward_train(x, gamma, beta, EPS, axis, out=out_y)
        return (y, mean, var), bnref.backward(dy, x, gamma, mean, var, EPS, axis, out=out_dx)

    return {
        ("bnref", "fwd"): lambda: bnref.forward_train(x, gamma, beta, EPS, axis),
        ("bnref", "fwd+bwd"): fwd_bwd,
        ("bnref out=", "fwd"): lambda: bnref.forward_train(x, gamma, beta, EPS, axis, out=y_buf),
        ("bnref out=", "fwd+bwd"): lambda: fwd_bwd(y_buf, dx_buf),
    }


def numpy_calls(inp: dict) -> dict:
    x, dy, gamma, beta, axis = inp["x"], inp["dy"], inp["gamma"], inp["beta"], inp["axis"]

    def fwd_bwd():
        y, mean, invstd = numpy_forward(x, gamma, beta, EPS, axis)
        return y, numpy_backward(dy, x, gamma, mean, invstd, axis)

    return {("numpy", "fwd"): lambda: numpy_forward(x, gamma, beta, EPS, axis), ("numpy", "fwd+bwd"): fwd_bwd}


def torch_tensor(torch, arr: np.ndarray):
    """A tensor on ``arr``'s memory in its dtype: ``torch.from_numpy``, which does not take
    ml_dtypes' bfloat16, so that goes through its uint16 view and ``Tensor.view(torch.bfloat16)``."""
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def torch_calls(torch, inp: dict) -> dict:
    """PyTorch on the same memory (channels-last: a logical NCHW tensor in channels_last format)."""
    F = torch.nn.functional
    x, dy = torch_tensor(torch, inp["x"]), torch_tensor(torch, inp["dy"])
    if inp["axis"] == -1:  # (N, H, W, C) memory -> NCHW view with channels_last strides, no copy
        x, dy = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
        assert x.is_contiguous(memory_format=torch.channels_last)
    gamma, beta = torch_tensor(torch, inp["gamma"]), torch_tensor(torch, inp["beta"])
    # clone() preserves strides, so x_req keeps x's memory format
    x_req, gamma_req, beta_req = (t.detach().clone().requires_grad_(True) for t in (x, gamma, beta))

    def fwd():
        with torch.no_grad():
            return F.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)

    def fwd_bwd():
        y = F.batch_norm(x_req, None, None, gamma_req, beta_req, training=True, eps=EPS)
        return y, torch.autograd.grad(y, (x_req, gamma_req, beta_req), dy)

    return {("torch", "fwd"): fwd, ("torch", "fwd+bwd"): fwd_bwd}


# ---------------------------------------------------------------- the run

@dataclass
class Row:
    case: str
    dtype: str
    threads: int
    impl: str
    op: str
    ms: float  # median
    ms_min: float
    gbps: float
    frac_ceiling: float
    vs_torch: float | None
    extra_bytes: int | None
    ceiling_gbps: float
    copy_gbps: float
    load: float = float("nan")  # 1-minute load average when the case finished (other processes)
    params: str = ""  # the dtype of gamma and beta (:func:`param_dtype`); "" where a saved run lacks it

    def cells(self) -> tuple[str, str, str]:
        """(vs torch, extra MB, % ceiling) as shown in the text and Markdown tables."""
        return ("" if self.vs_torch is None else f"{self.vs_torch:.2f}x",
                "" if self.extra_bytes is None else f"{self.extra_bytes / 1e6:.2f}",
                f"{100 * self.frac_ceiling:.0f}%")

    def pct_copy(self) -> str:
        """GB/s as a fraction of memcpy's (``numpy.copyto``, one thread, in the same run). The
        acceptance uses the ceiling instead, a kernel with regular stores at the same thread count."""
        return f"{100 * self.gbps / self.copy_gbps:.0f}%" if self.copy_gbps > 0 else ""


def limit_calls(nbytes: int, dtype) -> dict:
    """The machine's limits at this size: the streaming ceiling and memcpy (see the module docstring),
    over ``nbytes // itemsize`` values of ``dtype``; a 16-bit format's as uint16 (:func:`bit_view`),
    whose ``y = a*x + b`` streams the same bytes with integer arithmetic."""
    n = nbytes // np.dtype(dtype).itemsize
    src = bit_view(np.random.default_rng(1).standard_normal(n).astype(dtype))
    dst = np.empty_like(src)
    a, b = affine_constants(src)
    return {("ceiling", "stream"): lambda: _stream_affine(src, a, b, dst),
            ("copy", "copy"): lambda: np.copyto(dst, src)}


#: (shape, layout) of the --passes breakdown: the large shapes, whose passes stream memory
PASS_SHAPES = [((64, 64, 56, 56), "NCHW"), ((64, 64, 56, 56), "NHWC"),
               ((32, 256, 28, 28), "NCHW"), ((32, 256, 28, 28), "NHWC")]


def pass_calls(inp: dict) -> dict:
    """(pass, "bnref" | "bound") -> callable: each pass of bnref's split kernels, and the simplest
    loop with the same memory traffic (reads x, dy; writes y, dx) as its bound.

    A 16-bit format adds its widening to float32 (the reductions run on float32 copies of x and
    dy; its bound converts uint16 to float32), and its elementwise passes read and write bit
    patterns (their bounds: the same loops over uint16)."""
    x, dy = inp["x"], inp["dy"]
    prep = _core.Prepared(x, inp["axis"], training=True)
    x3, dy3 = prep.x3, prep.layout.view(dy)
    a, c, b = x3.shape
    out = np.empty_like(x3)
    shift = x3[0, :, 0].astype(np.float64)
    mean = shift + 0.5
    coef = np.full(c, 1.1)
    nchunks, rows = _kernels.chunking(a, x3.size, c if b == 1 else 0)
    sum_chunks, sum_rows = _kernels.chunking(a, x3.size)
    block = _kernels.block_rows(c, b)
    xr, dyr = prep.reducible(x3), prep.reducible(dy3)  # x3 and dy3 themselves for float32/float64
    xf, dyf, outf = (bit_view(arr.reshape(-1)) for arr in (x3, dy3, out))
    one, half = affine_constants(xf)
    if is_16bit(x.dtype):
        x3b, dy3b, outb, fraction_bits = bit_view(x3), bit_view(dy3), bit_view(out), prep.format.fraction_bits
        widened, wide = np.empty(x3.shape, np.float32), np.empty(xf.shape, np.float32)
        forward = lambda: _kernels.combine_half(x3b, mean, coef, coef, outb, None, None, None, None,  # noqa: E731
                                                fraction_bits)
        backward = lambda: _kernels.combine_half(x3b, mean, coef, coef, outb, dy3b, coef,  # noqa: E731
                                                 None, None, fraction_bits)
        widen = {("widen to float32", "bnref"): lambda: _kernels.widen(x3b, fraction_bits, widened),
                 ("widen to float32", "bound"): lambda: _stream_widen(xf, wide)}
    else:
        forward = lambda: _kernels.combine(x3, mean, coef, coef, out)  # noqa: E731
        backward = lambda: _kernels.combine(x3, mean, coef, coef, out, dy3, coef)  # noqa: E731
        widen = {}
    xrf, dyrf = xr.reshape(-1), dyr.reshape(-1)
    return {
        **widen,
        ("statistics", "bnref"): lambda: _kernels.channel_moments(xr, shift, rows, nchunks, block),
        ("statistics", "bound"): lambda: _read_sum(xrf, None),
        ("forward combine", "bnref"): forward,
        ("forward combine", "bound"): lambda: _stream_affine(xf, one, half, outf),
        ("backward sums", "bnref"): lambda: _kernels.channel_sums(xr, mean, dyr, None, sum_rows, sum_chunks),
        ("backward sums", "bound"): lambda: _read_sum(xrf, dyrf),
        ("backward combine", "bnref"): backward,
        ("backward combine", "bound"): lambda: _stream_two(xf, one, dyf, half, outf),
    }


#: the dtype of the per-pass view and --quick, and the reference of the half formats' criteria:
#: bnref's main dtype, the first row of the table
MAIN_DTYPE = KERNEL_NAMES[0]
#: the first field of the labels of the large shapes (those of --passes), whose data stream from memory
LARGE_SHAPES = tuple(dict.fromkeys("x".join(map(str, shape)) for shape, _ in PASS_SHAPES))


def is_large(case_label: str) -> bool:
    """Whether a :attr:`Case.label` is of one of :data:`LARGE_SHAPES`."""
    return case_label.split()[0] in LARGE_SHAPES


@dataclass(frozen=True)
class Target:
    """The performance criteria of one dtype at the run's largest thread count.

    ``vs_torch``: bnref (fresh outputs) at least this many times as fast as torch, on every case
    or (``large_only``) on the large shapes. ``ceiling``: bnref ``out=`` on the large shapes at
    least this fraction of the streaming ceiling, or, given a dtype's name, at least the fraction
    that dtype reaches on the same case and op in the same run (a 16-bit format moves half of
    float32's bytes, against a ceiling measured over the same bytes).
    """

    vs_torch: float
    large_only: bool
    ceiling: float | str


#: dtype -> its criteria (dtypes without a row have none)
TARGETS = {
    "float32": Target(1.2, large_only=False, ceiling=0.6),
    "float16": Target(1.2, large_only=True, ceiling="float32"),
    "bfloat16": Target(1.2, large_only=True, ceiling="float32"),
}


def run_passes(threads: int, repeats: int, dtype: str = MAIN_DTYPE) -> list[dict]:
    """Per large shape and pass: bnref's split kernel against its bound loop, round-robin in one
    process (see :func:`pass_calls`); rows of shape, pass, ms, bound ms and their ratio."""
    from bnref._threads import limit_threads

    rows = []
    with limit_threads(threads):
        for shape, layout in PASS_SHAPES:
            case = Case(shape, layout, dtype)
            calls = pass_calls(make_inputs(case))
            times = sample_ms(calls, repeats)
            values = math.prod(shape)
            for name, impl in calls:  # in pass order
                if impl == "bnref":
                    ms, bound = times[(name, impl)][0], times[(name, "bound")][0]
                    rows.append(dict(case=case.label, dtype=dtype, threads=threads, step=name, ms=ms,
                                     bound_ms=bound, ratio=ms / bound, ns_per_value=ms * 1e6 / values))
    return rows


def format_passes(rows: list[dict]) -> str:
    return render(("case", "dtype", "pass", "ms", "bound ms", "ratio", "ns/value"),
                  [(r["case"], r["dtype"], r["step"], f"{r['ms']:.3f}", f"{r['bound_ms']:.3f}", f"{r['ratio']:.2f}",
                    f"{r['ns_per_value']:.2f}") for r in rows], align="<<<>>>>")


def machine() -> dict:
    """What the numbers depend on: CPU model, CPUs, and the cache sizes of CPU 0 (Linux sysfs)."""
    caches = {}
    root = "/sys/devices/system/cpu/cpu0/cache"

    def read(index, name):
        with open(os.path.join(root, index, name)) as fh:
            return fh.read().strip()

    try:
        for index in sorted(os.listdir(root)):
            level, kind, size = (read(index, name) for name in ("level", "type", "size"))
            if kind != "Instruction":
                caches[f"L{level}{'d' if kind == 'Data' else ''}"] = size
    except OSError:
        pass
    return dict(processor=_cpu_name(), cpus=os.cpu_count(), caches=caches)


def cold_start(repeats: int = 3) -> dict:
    """Fresh interpreter: seconds to import bnref, then to run forward_train + backward once.

    Run once untimed first so Numba's on-disk cache is warm (the state after installation
    and one use); the median of ``repeats`` timed runs is reported.
    """
    code = (
        "import time, json; t0 = time.perf_counter(); import bnref, numpy as np; t1 = time.perf_counter()\n"
        "x = np.random.default_rng(0).standard_normal((100, 784)).astype(np.float32)\n"
        "g = np.ones(784, np.float32); b = np.zeros(784, np.float32); t2 = time.perf_counter()\n"
        "y, m, v = bnref.forward_train(x, g, b); bnref.backward(x, x, g, m, v); t3 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'first_call_s': t3 - t2}))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnref.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        wall = time.perf_counter() - start
        if i:
            runs.append(dict(json.loads(proc.stdout.strip().splitlines()[-1]), process_s=wall))
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


def run(cases: list[Case], threads: list[int], repeats: int, use_torch: bool, memory: bool,
        progress: bool = True) -> list[Row]:
    torch = None
    if use_torch:
        try:
            import torch
        except ImportError:
            print("bnref bench: torch is not importable; skipping the PyTorch rows", file=sys.stderr)
    from bnref._threads import limit_threads

    rows: list[Row] = []
    with Progress(len(cases) * len(threads), "bnref bench", unit="case", enabled=progress) as bar:
        for n_threads in threads:
            with limit_threads(n_threads):  # numba, torch and the BLAS pools alike
                for case in cases:
                    case_rows = _run_case(case, n_threads, repeats, torch, memory)
                    rows += case_rows
                    last = {r.impl: r for r in case_rows if r.op == "fwd+bwd"}
                    bar.update(1, case=f"{case.label} {case.dtype} t{n_threads}",
                               **{f"{k.split()[0]}_ms": round(v.ms, 3) for k, v in last.items() if k != "bnref out="})
    return rows


def _run_case(case: Case, n_threads: int, repeats: int, torch, memory: bool) -> list[Row]:
    inp = make_inputs(case)
    nbytes = inp["x"].nbytes
    calls = {**bnref_calls(inp), **(numpy_calls(inp) if has_numpy_baseline(case.dtype) else {})}
    if torch is not None:
        calls.update(torch_calls(torch, inp))
    times = sample_ms({**calls, **limit_calls(nbytes, case.dtype)}, repeats, min_total_s=MIN_CASE_SECONDS)
    # both limits count one read and one write of |x|
    ceiling = 2 * nbytes / times.pop(("ceiling", "stream"))[0] / 1e6
    copy = 2 * nbytes / times.pop(("copy", "copy"))[0] / 1e6
    rows = []
    for (impl, op), (ms, ms_min) in times.items():
        gbps = TRAFFIC[op] * nbytes / ms / 1e6
        torch_ms = times.get(("torch", op), (None,))[0]
        extra = peak_extra_bytes(calls[(impl, op)]) if memory and impl != "torch" else None
        rows.append(Row(case.label, case.dtype, n_threads, impl, op, ms, ms_min, gbps, gbps / ceiling,
                        None if torch_ms is None else torch_ms / ms, extra, ceiling, copy, os.getloadavg()[0],
                        param_dtype(case.dtype)))
    return rows


# ---------------------------------------------------------------- reporting

#: the measured columns of the text and Markdown tables (cells: :func:`_measured`)
MEASURED = ("median ms", "min ms", "GB/s", "% ceiling", "% copy", "vs torch", "extra MB", "ceiling GB/s",
            "copy GB/s", "load")


def _measured(r: Row) -> tuple[str, ...]:
    vs, extra, pct = r.cells()
    return (f"{r.ms:.3f}", f"{r.ms_min:.3f}", f"{r.gbps:.1f}", pct, r.pct_copy(), vs, extra,
            f"{r.ceiling_gbps:.1f}", f"{r.copy_gbps:.1f}", f"{r.load:.1f}")


def format_table(rows: list[Row]) -> str:
    """Every row: case, dtype, threads, impl and op, then the :data:`MEASURED` columns."""
    return render(("case", "dtype", "thr", "impl", "op", *MEASURED),
                  [(r.case, r.dtype, r.threads, r.impl, r.op, *_measured(r)) for r in rows],
                  align="<<><<" + ">" * len(MEASURED))


def markdown_summary(rows: list[Row], threads: int, dtype: str = MAIN_DTYPE) -> str:
    """The acceptance view: per case, bnref vs torch (fresh outputs) and out= against the ceiling."""
    sel = {(r.case, r.impl, r.op): r for r in rows if r.threads == threads and r.dtype == dtype}
    cases = list(dict.fromkeys(case for case, _, _ in sel))
    params = next((r.params for r in sel.values() if r.params), "")
    title = f"case ({dtype}{f', {params} parameters' if params else ''}, {threads} thread(s))"
    header = (title, "fwd ms bnref / torch", "fwd vs torch", "fwd+bwd ms bnref / torch", "fwd+bwd vs torch",
              "out= fwd % ceiling", "out= fwd+bwd % ceiling", "ceiling GB/s", "load")
    out = []
    for case in cases:
        cells = [case]
        for op in ("fwd", "fwd+bwd"):
            mine, theirs = sel.get((case, "bnref", op)), sel.get((case, "torch", op))
            cells.append(f"{mine.ms:.3f} / {theirs.ms:.3f}" if mine and theirs else "")
            cells.append(f"{mine.vs_torch:.2f}x" if mine and mine.vs_torch is not None else "")
        for op in ("fwd", "fwd+bwd"):
            r = sel.get((case, "bnref out=", op))
            cells.append(f"{100 * r.frac_ceiling:.0f}%" if r else "")
        any_row = sel[next(key for key in sel if key[0] == case)]
        cells += [f"{any_row.ceiling_gbps:.1f}", f"{any_row.load:.1f}"]
        out.append(cells)
    return render(header, out, align="<" + ">" * (len(header) - 1), style="markdown") + "\n"


def markdown_table(rows: list[Row]) -> str:
    """One Markdown table per (dtype, threads): ms, GB/s and speed-up over torch for every impl."""
    out = []
    for dtype in dict.fromkeys(r.dtype for r in rows):
        for threads in sorted({r.threads for r in rows}):
            sel = [r for r in rows if r.dtype == dtype and r.threads == threads]
            if not sel:
                continue
            out += [f"**{dtype}, {threads} thread(s)**", "",
                    render(("case", "op", "impl", *MEASURED), [(r.case, r.op, r.impl, *_measured(r)) for r in sel],
                           align="<<<" + ">" * len(MEASURED), style="markdown"), ""]
    return "\n".join(out)


def acceptance(rows: list[Row], threads: int) -> list[str]:
    """The criteria of :data:`TARGETS` at ``threads``, one line per row they cover: ``ok``, ``MISS``,
    or ``n/a`` where the dtype whose fraction of the ceiling is the target was not measured."""
    reference = {(r.dtype, r.case, r.op): r.frac_ceiling for r in rows
                 if r.threads == threads and r.impl == "bnref out="}
    lines = []
    for r in rows:
        target = TARGETS.get(r.dtype)
        if r.threads != threads or target is None:
            continue
        name = f"{r.case:<20} {r.dtype:<8} {r.op:<7}"
        if r.impl == "bnref" and r.vs_torch is not None and (is_large(r.case) or not target.large_only):
            ok = "ok  " if r.vs_torch >= target.vs_torch else "MISS"
            lines.append(f"{ok} {name} {r.vs_torch:.2f}x torch (need >= {target.vs_torch:g}x)")
        if r.impl == "bnref out=" and is_large(r.case):
            if isinstance(target.ceiling, str):
                need = reference.get((target.ceiling, r.case, r.op))
                need_text = f"{target.ceiling}'s {100 * need:.0f}%" if need is not None else f"{target.ceiling}'s"
            else:
                need, need_text = target.ceiling, f"{100 * target.ceiling:.0f}%"
            ok = "n/a " if need is None else "ok  " if r.frac_ceiling >= need else "MISS"
            lines.append(f"{ok} {name} out= {100 * r.frac_ceiling:.0f}% of the ceiling "
                         f"{r.ceiling_gbps:.1f} GB/s (need >= {need_text})")
    return lines


def plot_paths(path: str, dtypes: list[str]) -> dict:
    """dtype -> PNG: ``path`` for :data:`MAIN_DTYPE` (or the first of ``dtypes`` without it),
    ``stem-<dtype>.png`` next to it for the others."""
    first = MAIN_DTYPE if MAIN_DTYPE in dtypes else dtypes[0]
    stem, ext = os.path.splitext(path)
    return {dtype: path if dtype == first else f"{stem}-{dtype}{ext or '.png'}" for dtype in dtypes}


def plot(rows: list[Row], path: str, threads: int, dtype: str = MAIN_DTYPE) -> None:
    """Grouped bars of GB/s (minimal-traffic model) per case, fwd and fwd+bwd, with the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.threads == threads and r.dtype == dtype]
    cases = list(dict.fromkeys(r.case for r in sel))
    impls = list(dict.fromkeys(r.impl for r in sel))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.8 / len(impls)
    for ax, op in zip(axes, ("fwd", "fwd+bwd")):
        for i, impl in enumerate(impls):
            values = [next((r.gbps for r in sel if r.case == c and r.impl == impl and r.op == op), 0.0)
                      for c in cases]
            ax.bar(np.arange(len(cases)) + (i - (len(impls) - 1) / 2) * width, values, width, label=impl)
        ceilings = [next(r.ceiling_gbps for r in sel if r.case == c) for c in cases]
        ax.scatter(np.arange(len(cases)), ceilings, marker="_", s=900, color="k", label="ceiling (y=a*x+b)")
        ax.set_xticks(np.arange(len(cases)), cases, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{op}, {dtype}, {threads} thread(s)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"GB/s (minimal traffic: fwd 2|x|, fwd+bwd 5|x|)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,2; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    short_openmp_spin()  # before torch is imported and before Numba starts its thread pool
    import numba

    parser = argparse.ArgumentParser(prog="bnref bench", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--json", metavar="FILE", help="save the table, machine and cold start as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="save the table as Markdown (for the docs)")
    parser.add_argument("--plot", metavar="PNG", help="save a bar chart (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help=f"a fast subset: 3 shapes, {MAIN_DTYPE}, 3 repeats")
    parser.add_argument("--threads", type=_int_list, default=None,
                        help=f"comma-separated thread counts (default 1,{numba.config.NUMBA_NUM_THREADS})")
    parser.add_argument("--dtypes", default=None, help=f"comma-separated, default {','.join(KERNEL_NAMES)}")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed samples per measurement (default {DEFAULT_REPEATS}: on a noisy 2-vCPU VM, "
                             "medians of 7 move by 10-20 %% between runs); a case whose "
                             f"rounds are short takes more, up to {MAX_ROUNDS_FACTOR}x, so that it samples for "
                             f"about {MIN_CASE_SECONDS:g} s")
    parser.add_argument("--from-json", metavar="FILE",
                        help="measure nothing: re-render a saved --json run (table, --markdown, --plot)")
    parser.add_argument("--only", metavar="TEXT,...",
                        help="keep only cases whose label contains one of these, e.g. '56x56 NHWC,100x784'")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc peak-memory pass")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start subprocess")
    parser.add_argument("--passes", action="store_true",
                        help="instead: each pass of bnref's split kernels on the large shapes against the "
                             f"simplest loop with its memory traffic (--dtypes, default {MAIN_DTYPE}; the largest "
                             "thread count)")
    args = parser.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        return _report([Row(**r) for r in saved["rows"]], saved.get("cold_start"), args)
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or sorted({1, max_threads})
    if max(threads) > max_threads:
        parser.error(f"--threads: Numba was started with {max_threads} threads (NUMBA_NUM_THREADS)")
    dtypes = args.dtypes.split(",") if args.dtypes else [MAIN_DTYPE] if args.quick else list(KERNEL_NAMES)
    for dtype in dtypes:
        if dtype not in KERNEL_NAMES:
            parser.error(f"--dtypes: {dtype!r} is not one of {', '.join(KERNEL_NAMES)}")
    repeats = args.repeats or (3 if args.quick else DEFAULT_REPEATS)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    cases = [Case(shape, layout, dtype) for dtype in dtypes for shape, layout in shapes]
    if args.only:
        labels = list(dict.fromkeys(c.label for c in cases))
        cases = [c for c in cases if any(part in c.label for part in args.only.split(","))]
        if not cases:
            parser.error(f"--only {args.only!r} matches none of {labels}")

    load = os.getloadavg()[0]
    host = machine()
    caches = ", ".join(f"{k} {v}" for k, v in host["caches"].items())
    print(f"bnref bench: {host['processor'] or 'unknown CPU'} ({caches or 'caches unknown'}), "
          f"load average {load:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    if args.passes:
        pass_dtypes = dtypes if args.dtypes else [MAIN_DTYPE]
        rows = [row for dtype in pass_dtypes for row in run_passes(max(threads), repeats, dtype)]
        print(format_passes(rows))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(dict(meta=dict(host, repeats=repeats), passes=rows), fh, indent=1)
        return 0
    print(f"bnref bench: {len(cases)} cases x threads {threads}, {repeats} repeats", file=sys.stderr)
    rows = run(cases, threads, repeats, not args.no_torch, not args.no_memory)
    cold = None if args.no_cold_start else cold_start()
    if args.json:
        meta = dict(python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
                    bnref=bnref.__version__, machine=platform.machine(), processor=host["processor"],
                    cpus=os.cpu_count(), caches=host["caches"], load_average_start=load, load_average_end=os.getloadavg()[0],
                    repeats=repeats, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                    gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
                    threading_layer=numba.threading_layer())
        try:
            import torch

            meta["torch"] = torch.__version__
        except ImportError:
            pass
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=[asdict(r) for r in rows], cold_start=cold), fh, indent=1)
    return _report(rows, cold, args)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _report(rows: list[Row], cold: dict | None, args) -> int:
    threads = max(r.threads for r in rows)
    print(format_table(rows))
    print()
    print(f"acceptance at {threads} thread(s):")
    print("\n".join(acceptance(rows, threads)))
    if cold:
        print(f"\ncold start (warm on-disk cache): import bnref {cold['import_s']:.2f} s, first "
              f"forward_train + backward {cold['first_call_s']:.2f} s, whole process {cold['process_s']:.2f} s")
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("".join(markdown_summary(rows, threads, dtype) + "\n" for dtype in dtypes) + markdown_table(rows))
    if args.plot:
        for dtype, path in plot_paths(args.plot, dtypes).items():
            plot(rows, path, threads, dtype)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
