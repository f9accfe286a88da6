r"""The convention fingerprint: what a candidate does, measured by probing it.

Nothing is declared by the candidate; every entry comes from calling it on small
inputs whose answer under each convention is known in closed form:

* **eps and the normalizing variance.** One channel holds ``[-1, 1, -1, 1]``
  (biased variance 1, unbiased 4/3) and ``eps = 0.5``. Then
  ``|y_0| = 1/sqrt(v + eps)`` with eps inside the square root, ``1/(sqrt(v) + eps)``
  outside, ``1/sqrt(v)`` if eps is ignored, for ``v = 1`` (divide by m) or 4/3
  (divide by m - 1): six distinct values.
* **Running statistics.** A batch ``[1, 5, 1, 5]`` (mean 3, biased variance 4,
  unbiased 16/3); one step from two different old values ``r_1, r_2``
  separates the weight ``w`` on the new value from the batch statistic ``s`` it
  uses: ``new_k = (1 - w) r_k + w s``. ``w = momentum`` is the PyTorch convention
  (new-weighted), ``w = 1 - momentum`` the Flax/Keras one (old-weighted); ``s``
  for the variance is the biased (m) or the unbiased (m - 1) batch variance.
  Two momenta (0.1 and 0.3) tell a weight that follows the momentum from one that
  ignores it (the "fixed" form: a hard-coded weight on the new value).
* **Hyperparameters held in float32** (float64 only): y at ``eps = 0.1``, which float32
  does not hold, against the reference at eps and at float32(eps); the running probe's
  weight against the momentum and its float32 rounding.
* **A single value per channel** in training: an error, NaN, or a value.
* **float32 on offset data**: the worst relative error of ``y`` on data with
  mean up to 1e4 and std down to 1e-2, next to ``u32 * kappa``.
* **float64 computed in**: float64 data of mean 1 and std 0.01 (kappa ~ 100), where a
  float32 computation loses ~1e-5 of ``y``.

Every probe's ``(m, C)`` input is handed over in a rank the candidate declares
(``(m, C, 1, 1)`` or ``(m, 1, 1, C)``); NaN or inf from finite input (the single value
aside) is a defect, recorded in :attr:`Fingerprint.findings`, which fails the run.

In a half dtype the candidate declares (float16 first), with its ``param_dtype``:

* **Statistics accumulated in**: one channel of 4096 values of mean 4 and std 0.5.
  A float16 or bfloat16 running sum stalls once its ulp is twice the values
  (8192 in float16), and even a pairwise half sum loses ``u_half log2(m)`` of a
  mean that is eight standard deviations from 0; a float32 sum keeps ``y`` within
  an ulp of the exact result. The error of ``y`` is reported next to a sequential
  half sum's.
* **Output rounded once**: eight calls whose exact ``y`` lie ``2^-40`` beside a
  midpoint of the half grid (``x = [v, -v, v, -v]``, eps chosen so that
  ``gamma v / sqrt(v^2 + eps)`` is an odd number of half-ulps plus ``2^-40``). The
  exact result rounded once is known; a value that went through float32 (or the
  half type) lands on the midpoint, and ties-to-even picks the wrong neighbour.
* **Running variance above float16's range**: ``forward_eval`` on float16 data with
  float32 parameters and ``running_var = 1e5`` (float16's largest value is 65504):
  finite and right, zero (a float16 copy of the variance is inf), or inf/NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from bnref import reference
from bnref.conventions import Convention
from bnref.oracle._guard import CandidateError, Guard
from bnref.oracle.protocol import half_dtypes_of, param_dtype_of, ranks_of
from bnref.testing import condition_number, unit_roundoff

__all__ = ["Fingerprint", "RunningConvention", "fingerprint", "PROBE_MOMENTUM"]

PROBE_EPS = 0.5
PROBE_MOMENTUM = 0.1
#: the second momentum of the running-statistics probe: a weight that does not change with it is fixed
SECOND_PROBE_MOMENTUM = 0.3
#: one channel of the running-statistics probe: mean 3, biased variance 4, unbiased 16/3
RUNNING_PROBE = (1.0, 5.0, 1.0, 5.0)
#: the running variance's divisor as measured -> as :class:`bnref.conventions.Convention` names it
RUNNING_VARIANCE = {"m": "biased", "m-1": "unbiased"}
#: (mean, std) of the float32 offset probes; kappa = |mean| / std up to 1e6
OFFSET_PROBES = ((1e2, 1.0), (1e3, 1.0), (1e4, 1.0), (1e3, 1e-2), (1e4, 1e-2))
#: (values, mean, std) of the half accumulation probe's one channel
ACCUMULATION_PROBE = (4096, 4.0, 0.5)
#: calls of the rounded-once probe (two values each) and how far the exact y lies from a half midpoint
ROUNDING_CALLS, ROUNDING_OFFSET = 8, 2.0 ** -40
#: the float32 running variance of the range probe: above float16's largest value (65504)
RANGE_PROBE_VAR = 1e5
NO_HALF = "no half dtype declared"


def _rtol(dtype) -> float:
    """How far a probe result may sit from its hypothesis: 1e-3, or 16 ulps of a half type's rounding."""
    return max(1e-3, 16 * unit_roundoff(dtype))


def _column(values, dtype, channels: int = 1) -> np.ndarray:
    """``values`` as one channel of an (m, C) batch; (m, C) is the same layout for channel_axis 1 and -1."""
    return np.repeat(np.asarray(values, dtype=np.float64)[:, None], channels, axis=1).astype(dtype)


def _closest(value: float, hypotheses: dict, rtol: float):
    name, target = min(hypotheses.items(), key=lambda kv: abs(kv[1] - value))
    return name if abs(target - value) <= rtol * abs(target) else None


@dataclass(frozen=True)
class RunningConvention:
    """The measured running-statistics update: ``new = (1 - w) old + w * stat``.

    When it is consistent, :meth:`convention` is the :class:`~bnref.conventions.Convention`
    it follows, whose ``update_running`` gives the expected values.
    """

    momentum: float            # the momentum passed to the probe
    weight_mean: float         # w measured on the mean
    weight_var: float          # w measured on the variance
    stat_mean: float           # the batch statistic the mean moved toward
    stat_var: float            # ... the variance
    count: int
    direction_mean: str | None  # "new" / "old" / None (unrecognized)
    direction_var: str | None
    var_divisor: str | None    # "m" / "m-1" / None
    batch_mean: float = 3.0    # the probe batch's mean
    batch_var: float = 4.0     # ... and its biased variance
    rtol: float = 1e-3         # how close to a hypothesis counts (wider for half running statistics)
    second_momentum: float = math.nan   # the second momentum passed to the probe
    second_weight_mean: float = math.nan  # w measured on the mean at second_momentum
    second_weight_var: float = math.nan

    @property
    def consistent(self) -> bool:
        return (self.direction_mean is not None and self.direction_mean == self.direction_var
                and self.var_divisor is not None
                and abs(self.stat_mean - self.batch_mean) <= self.rtol * abs(self.batch_mean))

    @property
    def fixed_weight(self) -> float | None:
        """The weight on the new value when the momentum is ignored ("fixed" form), else None."""
        return self.weight_mean if self.direction_mean == "fixed" else None

    def convention(self) -> Convention | None:
        """The running-statistics convention measured (momentum form, running variance); None if inconsistent.

        Only ``momentum`` and ``running_var`` of the record are measured here; eps and the
        normalizing variance keep the record's defaults.
        """
        if not self.consistent:
            return None
        return Convention("measured", running_var=RUNNING_VARIANCE[self.var_divisor], momentum=self.direction_mean,
                          fixed_weight=self.fixed_weight)

    def describe(self) -> str:
        if not self.consistent:
            unbiased = self.batch_var * self.count / (self.count - 1)
            return (f"inconsistent or unrecognized: with momentum={self.momentum:g} the weight on the new value "
                    f"is {self.weight_mean:.4g} for the mean and {self.weight_var:.4g} for the variance; the "
                    f"mean moves toward {self.stat_mean:.4g} (batch mean {self.batch_mean:.4g}), the variance "
                    f"toward {self.stat_var:.4g} (biased {self.batch_var:.4g}, unbiased {unbiased:.4g})")
        if self.direction_mean == "fixed":
            return (f"momentum ignored: fixed weight {self.weight_mean:.4g} on the new value (the same at "
                    f"momentum={self.momentum:g} and {self.second_momentum:g}), same for mean and variance")
        on = "new" if self.direction_mean == "new" else "old"
        return (f"momentum={self.momentum:g} weighs the {on} value (weight {self.weight_mean:.4g} on the new "
                f"batch statistic), same for mean and variance")


@dataclass
class Fingerprint:
    """Measured conventions of one candidate (see the module docstring)."""

    dtype: str
    eps: str = "unmeasured"
    normalize: str = "unmeasured"
    running: RunningConvention | None = None
    running_note: str = "not provided"
    single_value: str = "unmeasured"
    float32_offset: dict | None = None
    float32_offset_note: str = "float32 not supported"
    #: the half dtype the half entries were measured in (None: the candidate declares none)
    half_dtype: str | None = None
    accumulation: str = NO_HALF
    rounding: str = NO_HALF
    large_running_var: str = NO_HALF
    #: the numbers behind the half entries, for the JSON report
    half_raw: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: how eps and momentum are held, measured in float64: "float64" (as given), "float32", or a note
    eps_stored: str = "not measured (needs float64)"
    momentum_stored: str = "not measured (needs float64 and update_running)"
    #: whether float64 input is computed in float64: "float64", "float32: ..." or a note
    float64_precision: str = "float64 not supported"
    #: update_running_steps: the convention measured over several steps, and the entry describing it
    steps_convention: Convention | None = None
    steps: str = "not provided"
    #: defects a probe saw (NaN/inf from finite input): they fail the run as a failed property does
    findings: list[str] = field(default_factory=list)

    @property
    def eps_float32(self) -> bool:
        """eps is rounded to float32 before use (ONNX, Paddle, MXNet, tf_keras attributes)."""
        return self.eps_stored.startswith("float32")

    @property
    def float64_in_float32(self) -> bool:
        """float64 input is computed in float32 (Keras' result_type(x, "float32"))."""
        return self.float64_precision.startswith("float32")

    @property
    def momentum_float32(self) -> bool:
        """momentum is rounded to float32 before use."""
        return self.momentum_stored.startswith("float32")

    def rows(self) -> list[tuple[str, str]]:
        """(item, finding) pairs in the order the report prints them."""
        running_var = momentum = self.running_note
        if self.running is not None:
            divisor = {"m": "divides by m (biased)", "m-1": "divides by m - 1 (unbiased)"}
            running_var = divisor.get(self.running.var_divisor,
                                      f"unrecognized (moves toward {self.running.stat_var:.4g})")
            momentum = self.running.describe()
        f32 = self.float32_offset_note
        if self.float32_offset is not None:
            o = self.float32_offset
            f32 = (f"worst relative error of y {o['error']:.3g} at mean {o['mean']:g}, std {o['std']:g} "
                   f"(kappa {o['kappa']:.3g}; u32*kappa = {o['u32_kappa']:.3g})")
        half = f" ({self.half_dtype})" if self.half_dtype else ""
        return [("eps", self.eps), ("normalizing variance", self.normalize), ("running variance", running_var),
                ("momentum", momentum), ("running statistics over steps", self.steps),
                ("eps stored as", self.eps_stored),
                ("momentum stored as", self.momentum_stored),
                ("single value per channel (training)", self.single_value),
                ("float32, offset data", f32), ("float64 computed in", self.float64_precision),
                (f"statistics accumulated in{half}", self.accumulation),
                (f"output rounded once{half}", self.rounding),
                ("float32 running_var above float16's range", self.large_running_var)]

    def to_dict(self) -> dict:
        out = {k.replace(" ", "_"): v for k, v in self.rows()}
        out["dtype"] = self.dtype
        if self.running is not None:
            out["running_raw"] = {k: getattr(self.running, k) for k in self.running.__dataclass_fields__}
        out["float32_offset_raw"] = self.float32_offset
        out["half_dtype"] = self.half_dtype
        out["half_raw"] = self.half_raw
        out["findings"] = self.findings
        return out


def _probe_eps(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    x = _column([-1.0, 1.0, -1.0, 1.0], dtype)
    ones, zeros = np.ones(1, param or dtype), np.zeros(1, param or dtype)
    try:
        y = call("forward_train", x, ones, zeros, PROBE_EPS).astype(np.float64)
    except CandidateError as exc:  # reported, not raised: the fingerprint describes what happens
        fp.eps = fp.normalize = f"probe failed: {exc}"
        return
    value = abs(float(y[0, 0]))
    hypotheses = {}
    for divisor, v in (("m", 1.0), ("m-1", 4.0 / 3.0)):
        hypotheses[("inside", divisor)] = 1 / math.sqrt(v + PROBE_EPS)
        hypotheses[("outside", divisor)] = 1 / (math.sqrt(v) + PROBE_EPS)
        hypotheses[("ignored", divisor)] = 1 / math.sqrt(v)
    found = _closest(value, hypotheses, rtol=_rtol(dtype))
    if found is None:
        fp.eps = fp.normalize = f"unrecognized: |y| = {value:.6g} for x = [-1, 1, -1, 1], eps = {PROBE_EPS}"
        return
    where, divisor = found
    fp.eps = {"inside": "inside the square root: (x - mean) / sqrt(var + eps)",
              "outside": "OUTSIDE the square root: (x - mean) / (sqrt(var) + eps)",
              "ignored": "IGNORED: the given eps has no effect"}[where]
    fp.normalize = {"m": "divides by m (biased), as the paper",
                    "m-1": "divides by m - 1 (unbiased), unlike the paper"}[divisor]


def _probe_running(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    param = np.dtype(dtype if param is None else param)
    rtol = _rtol(param)
    x = _column(RUNNING_PROBE, dtype)
    count = len(RUNNING_PROBE)
    batch_mean, batch_var = float(np.mean(RUNNING_PROBE)), float(np.var(RUNNING_PROBE))
    # none of 1/sqrt(var), sqrt(var) or 1 is close to the batch's mean and variances
    olds = (1.0, 5.0)
    try:
        news = {momentum: [call("update_running", x, np.full(1, r, param), np.full(1, r, param), momentum)
                           for r in olds] for momentum in (PROBE_MOMENTUM, SECOND_PROBE_MOMENTUM)}
    except CandidateError as exc:
        fp.running_note = f"probe failed: {exc}"
        return

    def solve(momentum, k):
        a, b = (float(n[k].astype(np.float64)[0]) for n in news[momentum])
        keep = (b - a) / (olds[1] - olds[0])          # 1 - w
        w = 1.0 - keep
        stat = (a - keep * olds[0]) / w if abs(w) > 1e-12 else math.nan
        return w, stat

    (w_mean, s_mean), (w_var, s_var) = solve(PROBE_MOMENTUM, 0), solve(PROBE_MOMENTUM, 1)
    w2_mean, w2_var = solve(SECOND_PROBE_MOMENTUM, 0)[0], solve(SECOND_PROBE_MOMENTUM, 1)[0]

    def direction(w, w2):
        """new / old when both momenta fit it; fixed when the weight (> 0) ignores the momentum."""
        forms = {"new": lambda m: m, "old": lambda m: 1 - m}
        for form, weight in forms.items():
            if _closest(w, {form: weight(PROBE_MOMENTUM)}, rtol) and _closest(w2, {form: weight(SECOND_PROBE_MOMENTUM)},
                                                                               rtol):
                return form
        return "fixed" if w > rtol and math.isfinite(w) and _closest(w2, {"fixed": w}, rtol) else None

    divisor = (_closest(s_var, {"m": batch_var, "m-1": batch_var * count / (count - 1)}, rtol)
               if math.isfinite(s_var) else None)
    fp.running = RunningConvention(PROBE_MOMENTUM, w_mean, w_var, s_mean, s_var, count, direction(w_mean, w2_mean),
                                   direction(w_var, w2_var), divisor, batch_mean, batch_var, rtol,
                                   SECOND_PROBE_MOMENTUM, w2_mean, w2_var)
    if fp.running.direction_mean == fp.running.direction_var == "fixed" and abs(w_mean - w_var) > rtol * w_mean:
        fp.running = replace(fp.running, direction_var=None)


#: the second batch of the steps probe (mean 6, biased variance 16), after RUNNING_PROBE
SECOND_RUNNING_PROBE = (2.0, 10.0, 2.0, 10.0)


def _probe_steps(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    """Two steps (RUNNING_PROBE, then SECOND_RUNNING_PROBE) from two initial values and at two momenta:
    the form of the momentum, the running variance and debiasing are the hypothesis that fits all four."""
    param = np.dtype(dtype if param is None else param)
    rtol = _rtol(param)
    xs = [_column(RUNNING_PROBE, dtype), _column(SECOND_RUNNING_PROBE, dtype)]
    means = [np.array([np.mean(b)]) for b in (RUNNING_PROBE, SECOND_RUNNING_PROBE)]
    variances = [np.array([np.var(b)]) for b in (RUNNING_PROBE, SECOND_RUNNING_PROBE)]
    counts = [len(RUNNING_PROBE)] * 2
    probes = [(momentum, r) for momentum in (PROBE_MOMENTUM, SECOND_PROBE_MOMENTUM) for r in (1.0, 5.0)]
    try:
        got = [np.concatenate([np.asarray(a, np.float64) for a in
                               call("update_running_steps", xs, np.full(1, r, param), np.full(1, r, param), momentum)])
               for momentum, r in probes]
    except CandidateError as exc:
        fp.steps = f"probe failed: {exc}"
        return
    for debiased in (False, True):
        for form in ("new", "old"):
            for running_var in ("unbiased", "biased"):
                conv = Convention("measured-steps", running_var=running_var, momentum=form, debiased=debiased)
                expected = [np.concatenate(conv.update_running_steps(np.full(1, r), np.full(1, r), means, variances,
                                                                     counts, momentum)) for momentum, r in probes]
                if all(np.allclose(g, e, rtol=rtol, atol=0) for g, e in zip(got, expected)):
                    fp.steps_convention = conv
                    fp.steps = (("debiased moving average (zero-started, divided by 1 - (1 - w)^t)" if debiased
                                 else "moving average from the given state") +
                                f"; momentum weighs the {form} value, running variance {running_var}")
                    return
    fp.steps = ("unrecognized: after two steps from 1 and 5 at momentum 0.1 and 0.3 the running mean is "
                + ", ".join(f"{g[0]:.6g}" for g in got))


def _probe_single_value(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    x = np.array([[0.5, -2.0, 7.0]], dtype=dtype)  # (1, 3): m = 1 in either layout
    gamma, beta = np.full(3, 1.5, param or dtype), np.array([0.25, -1.0, 2.0], param or dtype)
    try:
        y = call("forward_train", x, gamma, beta, 1e-5, finite=False).astype(np.float64)
    except CandidateError as exc:
        raised = str(exc).split(" raised ", 1)[-1].splitlines()[0][:120]
        # raising on m = 1 is a convention (the exception is the cause); a bad return or a timeout is not
        fp.single_value = f"error ({raised})" if exc.__cause__ is not None else f"probe failed: {exc}"
        return
    if not np.all(np.isfinite(y)):
        fp.single_value = "NaN/inf, no error"
    elif np.allclose(y.reshape(-1), beta, rtol=1e-6, atol=1e-6):
        fp.single_value = "a value: y = beta (var = 0), no error"
    elif np.allclose(y.reshape(-1), x.astype(np.float64).reshape(-1), rtol=1e-6, atol=1e-6):
        # PaddlePaddle skips the normalization of a one-value channel: gamma and beta are not applied
        fp.single_value = "a value: y = x (normalization skipped, gamma and beta not applied), no error"
    else:
        fp.single_value = f"a value: y = {np.array2string(y.reshape(-1), precision=4)}, no error"


def _normalized(call, x, param_dtype, eps: float = 1e-5):
    """The candidate's training ``y`` of an ``(m, C)`` probe with gamma = 1 and beta = 0 in
    ``param_dtype``, as float64, and the reference's.

    Raises:
        CandidateError: the call failed (raised, returned something else, timed out).
    """
    channels = x.shape[1]
    gamma, beta = np.ones(channels, param_dtype), np.zeros(channels, param_dtype)
    y = call("forward_train", x, gamma, beta, eps).astype(np.float64)
    return y, reference.forward_train(x, gamma, beta, eps, 1)[0]


def _probe_float32_offset(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    if "float32" not in tuple(candidate.dtypes):
        return
    rng = np.random.default_rng(1234)
    worst = None
    for mean, std in OFFSET_PROBES:
        x = (mean + std * rng.standard_normal((256, 3))).astype(np.float32)
        try:
            y, y_ref = _normalized(call, x, np.float32)
        except CandidateError as exc:
            fp.float32_offset_note = f"probe failed at mean {mean:g}, std {std:g}: {exc}"
            return
        err = float(np.max(np.abs(y - y_ref))) if np.all(np.isfinite(y)) else math.inf
        error = err / float(np.max(np.abs(y_ref)))
        kappa = condition_number(x, 1, 1e-5)
        if worst is None or error > worst["error"]:
            worst = {"error": error, "mean": mean, "std": std, "kappa": kappa,
                     "u32_kappa": unit_roundoff(np.float32) * kappa}
    fp.float32_offset = worst


def _probe_half(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    halves = half_dtypes_of(candidate)
    if not halves:
        return
    fp.half_dtype = "float16" if "float16" in halves else halves[0]
    half, param = np.dtype(fp.half_dtype), param_dtype_of(candidate, fp.half_dtype)
    _probe_accumulation(call, half, param, fp)
    _probe_rounding(call, half, param, fp)
    if not callable(getattr(candidate, "forward_eval", None)):
        fp.large_running_var = "not provided (forward_eval)"
    elif "float16" not in halves or param_dtype_of(candidate, "float16") != np.float32:
        fp.large_running_var = "not applicable: needs float16 with float32 parameters (param_dtype = \"float32\")"
    else:
        _probe_large_running_var(call, fp)


def _ulps(actual, expected, dtype) -> np.ndarray:
    """|actual - expected| in units of the spacing of ``dtype`` at ``expected`` (NaN/inf: inf)."""
    expected = np.asarray(expected, np.float64)
    spacing = np.ldexp(2 * unit_roundoff(dtype), np.frexp(np.abs(expected))[1] - 1)  # 2u times 2^floor(log2|e|)
    err = np.abs(np.asarray(actual, np.float64) - expected) / spacing
    return np.where(np.isfinite(err), err, np.inf)


def _probe_accumulation(call, half, param, fp: Fingerprint) -> None:
    m, mean, std = ACCUMULATION_PROBE
    x = (mean + std * np.random.default_rng(4321).standard_normal((m, 1))).astype(half)
    try:
        y, y_ref = _normalized(call, x, param)
    except CandidateError as exc:
        fp.accumulation = f"probe failed: {exc}"
        return
    # the hypothesis of a half computation: a running sum in the half type for the mean and the variance
    running = lambda v: np.add.accumulate(v.astype(half).reshape(-1))[-1].astype(np.float64)  # noqa: E731
    mean_half = np.float64(np.asarray(running(x) / m).astype(half))
    var_half = running((x.astype(np.float64) - mean_half) ** 2) / m
    y_half = (x.astype(np.float64) - mean_half) / np.sqrt(var_half + 1e-5)
    scale = float(np.max(np.abs(y_ref)))
    error = float(np.max(np.abs(y - y_ref))) / scale if np.all(np.isfinite(y)) else math.inf
    half_error = float(np.max(np.abs(y_half - y_ref))) / scale
    ulps = float(np.max(_ulps(y, y_ref, half)))
    fp.half_raw["accumulation"] = {"values": m, "mean": mean, "std": std, "error": error, "ulps": ulps,
                                   "half_running_sum_error": half_error}
    where = f"{m} values of mean {mean:g}, std {std:g}"
    if ulps <= 1.0:
        fp.accumulation = f"float32 or wider: y within {ulps:.2g} ulp of the exact result ({where})"
    elif error >= 0.1 * half_error:
        fp.accumulation = (f"the half type: relative error of y {error:.3g} ({where}; a {half.name} running sum "
                           f"gives {half_error:.3g}, float32 under one ulp)")
    else:
        fp.accumulation = (f"unrecognized: y off by {ulps:.3g} ulp, relative error {error:.3g} ({where}; a "
                           f"{half.name} running sum gives {half_error:.3g}, float32 under one ulp)")


def _rounding_probes(half, rng):
    """(v, gamma, beta, eps) with y = beta +- gamma v / sqrt(v^2 + eps) ROUNDING_OFFSET beside half midpoints.

    beta is an even step of the half grid in [1.3, 1.7] and gamma xhat an even number of steps and a
    half, plus the offset outward; so both values stay in [1, 2), and a value rounded to float32 first
    is a tie that ties-to-even resolves inward: the wrong neighbour.
    """
    step = 2 * unit_roundoff(half)     # the half grid's spacing in [1, 2)
    for _ in range(ROUNDING_CALLS):
        v = float(np.asarray(rng.uniform(0.5, 1.0)).astype(half))
        gamma = float(np.asarray(rng.uniform(1.0, 2.0)).astype(half))
        steps = 2 * int(rng.integers(int(0.025 / step), int(0.125 / step)))
        beta = 2 * int(rng.integers(int(0.65 / step), int(0.85 / step))) * step
        g = (steps + 0.5) * step + ROUNDING_OFFSET
        yield v, gamma, beta, (gamma * v / g) ** 2 - v * v


def _probe_rounding(call, half, param, fp: Fingerprint) -> None:
    rng = np.random.default_rng(2718)
    wrong, total, worst = 0, 0, 0.0
    for v, gamma, beta, eps in _rounding_probes(half, rng):
        x = _column([v, -v, v, -v], half)
        g, b = np.full(1, gamma, param), np.full(1, beta, param)
        try:
            y = call("forward_train", x, g, b, eps)
        except CandidateError as exc:
            fp.rounding = f"probe failed: {exc}"
            return
        once = reference.forward_train(x, g, b, eps, 1)[0].astype(half)
        ulps = _ulps(y, once.astype(np.float64), half)
        wrong += int(np.count_nonzero(ulps > 0))
        total += ulps.size
        worst = max(worst, float(np.max(ulps)))
    fp.half_raw["rounding"] = {"values": total, "not_rounded_once": wrong, "worst_ulps": worst}
    if wrong == 0:
        fp.rounding = f"yes: all {total} probe values are the exact result rounded once"
    elif worst <= 1:
        fp.rounding = (f"no: {wrong} of {total} probe values one ulp from the exact result rounded once (rounded "
                       f"through float32 or the half type first)")
    else:
        fp.rounding = f"no: {wrong} of {total} probe values differ from the exact result rounded once, by up to " \
                      f"{worst:.3g} ulp"


def _probe_large_running_var(call, fp: Fingerprint) -> None:
    rng = np.random.default_rng(99)
    x = (math.sqrt(RANGE_PROBE_VAR) * rng.standard_normal((8, 2))).astype(np.float16)
    gamma, beta = np.ones(2, np.float32), np.array([0.0, 0.5], np.float32)
    mean, var = np.zeros(2, np.float32), np.full(2, RANGE_PROBE_VAR, np.float32)
    try:
        y = call("forward_eval", x, gamma, beta, mean, var, 1e-5).astype(np.float64)
    except CandidateError as exc:
        fp.large_running_var = f"probe failed: {exc}"
        return
    y_ref = reference.forward_eval(x, gamma, beta, mean, var, 1e-5, 1)
    error = float(np.max(np.abs(y - y_ref))) / float(np.max(np.abs(y_ref))) if np.all(np.isfinite(y)) else math.inf
    fp.half_raw["large_running_var"] = {"running_var": RANGE_PROBE_VAR, "error": error}
    at = f"running_var = {RANGE_PROBE_VAR:g}"
    if not np.all(np.isfinite(y)):
        fp.large_running_var = f"inf/NaN output at {at}"
    elif np.array_equal(y, np.broadcast_to(beta.astype(np.float64), y.shape)):
        fp.large_running_var = f"y = beta at {at}: the variance became inf (cast to float16)"
    elif error <= 16 * unit_roundoff(np.float16):
        fp.large_running_var = f"finite and right at {at} (relative error {error:.2g})"
    else:
        fp.large_running_var = f"wrong at {at}: relative error {error:.3g}"


#: an eps and a momentum that float32 does not hold: float32(0.1) = 0.1 + 1.5e-9
STORAGE_PROBE = 0.1


def _stored_as(value: float, exact: float, as_float32: float, what: str) -> str:
    """Which of ``exact`` (the given hyperparameter used as is) and ``as_float32`` ``value`` matches."""
    err64, err32 = abs(value - exact), abs(value - as_float32)
    if err32 < err64 / 4:
        return f"float32: {what} matches {STORAGE_PROBE} rounded to float32 (off by {err32:.2g}, {err64:.2g} from " \
               f"the exact value)"
    if err64 < err32 / 4:
        return "float64 (as given)"
    return f"unrecognized: {what} off by {err64:.2g} from the exact value, {err32:.2g} from float32"


def _probe_storage(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    """eps (and momentum, from the running probe's weights) held in float32, seen in float64 results."""
    if np.dtype(dtype) != np.float64:
        return
    x = _column([-1.0, 1.0, -1.0, 1.0], dtype)
    ones, zeros = np.ones(1, dtype), np.zeros(1, dtype)
    try:
        y = call("forward_train", x, ones, zeros, STORAGE_PROBE).astype(np.float64)
    except CandidateError as exc:
        fp.eps_stored = f"probe failed: {exc}"
    else:
        ref = lambda eps: reference.forward_train(x, ones, zeros, eps, 1)[0]  # noqa: E731
        fp.eps_stored = _stored_as(float(y[0, 0]), float(ref(STORAGE_PROBE)[0, 0]),
                                   float(ref(float(np.float32(STORAGE_PROBE)))[0, 0]), "y at eps = 0.1")
    running = fp.running
    if running is None or not running.consistent or running.direction_mean == "fixed":
        fp.momentum_stored = "not measured (no consistent running convention that uses momentum)"
        return
    weight = running.convention().weight
    m32 = float(np.float32(running.momentum))
    fp.momentum_stored = _stored_as(running.weight_mean, weight(running.momentum),
                                    min((weight(m32), float(np.float32(weight(m32)))),
                                        key=lambda w: abs(w - running.weight_mean)),
                                    f"the weight at momentum = {running.momentum:g}")


#: (values, mean, std) of the float64 precision probe: x rounded to float32 moves y by u32 * 100 ~ 6e-6
FLOAT64_PROBE = (64, 1.0, 1e-2)


def _probe_float64_precision(call, candidate, dtype, fp: Fingerprint, param=None) -> None:
    """float64 data whose float32 computation loses visibly: kappa = 100, so float32 costs ~1e-5 of y."""
    if "float64" not in tuple(candidate.dtypes):
        return
    m, mean, std = FLOAT64_PROBE
    x = mean + std * np.random.default_rng(5678).standard_normal((m, 2))
    try:
        y, y_ref = _normalized(call, x, np.float64)
    except CandidateError as exc:
        fp.float64_precision = f"probe failed: {exc}"
        return
    error = float(np.max(np.abs(y - y_ref))) / float(np.max(np.abs(y_ref)))
    u32_kappa = unit_roundoff(np.float32) * condition_number(x, 1, 1e-5)
    where = f"relative error of y {error:.3g} at mean {mean:g}, std {std:g} (u32*kappa = {u32_kappa:.3g})"
    fp.float64_precision = ("float32: float64 input computed in float32, " + where if error > 0.01 * u32_kappa
                            else "float64: " + where)


#: (name, probe, the method it needs beyond forward_train) in the order they run
_PROBES = (("eps", _probe_eps, None), ("running statistics", _probe_running, "update_running"),
           ("running statistics over steps", _probe_steps, "update_running_steps"),
           ("hyperparameter storage", _probe_storage, None), ("single value", _probe_single_value, None),
           ("float32 offset", _probe_float32_offset, None),
           ("float64 precision", _probe_float64_precision, None),
           ("half precision", _probe_half, None))


def fingerprint(candidate, dtype: str | None = None, *, guard: Guard | None = None) -> Fingerprint:
    """Probe ``candidate`` (in float64 when it supports it) and return its :class:`Fingerprint`.

    Never raises for the candidate's misbehaviour: a probe whose call raises, returns
    something other than the promised arrays or exceeds ``guard``'s time limit is recorded
    as ``probe failed: ...``.
    """
    guard = guard if guard is not None else Guard()
    dtypes = tuple(candidate.dtypes)
    dtype = dtype or ("float64" if "float64" in dtypes else dtypes[0])
    fp = Fingerprint(dtype=dtype)

    lifted = _probe_shape(candidate)

    def call(method, *args, finite=True):
        """``candidate.method(*args)``, an ``(m, C)`` probe x (and arrays of its shape) lifted to a rank
        the candidate takes and the results brought back to ``(m, C)``; a non-finite result of finite
        input is recorded in ``fp.findings`` unless ``finite`` is False (m = 1, where 0/0 is a convention).
        """
        if isinstance(args[0], list):  # update_running_steps: a list of probe batches
            args = ([x.reshape(lifted(x.shape)) if x.ndim == 2 else x for x in args[0]], *args[1:])
        shape = np.shape(args[0])
        if len(shape) == 2:
            args = tuple(a.reshape(lifted(shape)) if isinstance(a, np.ndarray) and a.shape == shape else a
                         for a in args)
        out = guard.call(candidate, method, *args)
        if len(shape) == 2:
            back = lambda a: a.reshape(shape) if a.shape == lifted(shape) else a  # noqa: E731
            out = tuple(back(a) for a in out) if isinstance(out, tuple) else back(out)
        if finite and all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in args
                          if isinstance(a, np.ndarray)):
            bad = [np.asarray(a) for a in (out if isinstance(out, tuple) else (out,))
                   if not np.all(np.isfinite(np.asarray(a, np.float64)))]
            if bad:
                finding = (f"{method} returned NaN/inf for finite input of shape {np.shape(args[0])} "
                           f"({_probe_names[-1]} probe)")
                if finding not in fp.findings:  # a probe may make the same call twice
                    fp.findings.append(finding)
        return out

    _probe_names = [""]
    param = param_dtype_of(candidate, dtype)
    with np.errstate(all="ignore"):  # a candidate's NaN or inf is a finding, reported in the entry
        for name, probe, needs in _PROBES:
            if needs is None or callable(getattr(candidate, needs, None)):
                _probe_names.append(name)
                probe(call, candidate, dtype, fp, param)
    return fp


def _probe_shape(candidate):
    """``lifted(shape)``: the shape an ``(m, C)`` probe takes for ``candidate``: itself when the
    candidate takes rank 2, else ``(m, C, 1, ...)`` (channels-first) or ``(m, 1, ..., C)``
    (channels-last) of its smallest rank; the same values per channel either way.
    """
    ranks = ranks_of(candidate)
    rank = 2 if 2 in ranks else min(ranks)

    def lifted(shape):
        m, c = shape
        ones = (1,) * (rank - 2)
        return (m, c, *ones) if candidate.channel_axis == 1 else (m, *ones, c)

    return lifted
