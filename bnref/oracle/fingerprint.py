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
* **A single value per channel** in training: an error, NaN, or a value.
* **float32 on offset data**: the worst relative error of ``y`` on data with
  mean up to 1e4 and std down to 1e-2, next to ``u32 * kappa``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bnref import reference
from bnref.conventions import Convention
from bnref.oracle._guard import CandidateError, Guard
from bnref.testing import condition_number, unit_roundoff

__all__ = ["Fingerprint", "RunningConvention", "fingerprint", "PROBE_MOMENTUM"]

PROBE_EPS = 0.5
PROBE_MOMENTUM = 0.1
#: one channel of the running-statistics probe: mean 3, biased variance 4, unbiased 16/3
RUNNING_PROBE = (1.0, 5.0, 1.0, 5.0)
#: the running variance's divisor as measured -> as :class:`bnref.conventions.Convention` names it
RUNNING_VARIANCE = {"m": "biased", "m-1": "unbiased"}
#: (mean, std) of the float32 offset probes; kappa = |mean| / std up to 1e6
OFFSET_PROBES = ((1e2, 1.0), (1e3, 1.0), (1e4, 1.0), (1e3, 1e-2), (1e4, 1e-2))


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

    @property
    def consistent(self) -> bool:
        return (self.direction_mean is not None and self.direction_mean == self.direction_var
                and self.var_divisor is not None
                and abs(self.stat_mean - self.batch_mean) <= 1e-3 * abs(self.batch_mean))

    def convention(self) -> Convention | None:
        """The running-statistics convention measured (momentum form, running variance); None if inconsistent.

        Only ``momentum`` and ``running_var`` of the record are measured here; eps and the
        normalizing variance keep the record's defaults.
        """
        if not self.consistent:
            return None
        return Convention("measured", running_var=RUNNING_VARIANCE[self.var_divisor], momentum=self.direction_mean)

    def describe(self) -> str:
        if not self.consistent:
            unbiased = self.batch_var * self.count / (self.count - 1)
            return (f"inconsistent or unrecognized: with momentum={self.momentum:g} the weight on the new value "
                    f"is {self.weight_mean:.4g} for the mean and {self.weight_var:.4g} for the variance; the "
                    f"mean moves toward {self.stat_mean:.4g} (batch mean {self.batch_mean:.4g}), the variance "
                    f"toward {self.stat_var:.4g} (biased {self.batch_var:.4g}, unbiased {unbiased:.4g})")
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
    notes: list[str] = field(default_factory=list)

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
        return [("eps", self.eps), ("normalizing variance", self.normalize), ("running variance", running_var),
                ("momentum", momentum), ("single value per channel (training)", self.single_value),
                ("float32, offset data", f32)]

    def to_dict(self) -> dict:
        out = {k.replace(" ", "_"): v for k, v in self.rows()}
        out["dtype"] = self.dtype
        if self.running is not None:
            out["running_raw"] = {k: getattr(self.running, k) for k in self.running.__dataclass_fields__}
        out["float32_offset_raw"] = self.float32_offset
        return out


def _probe_eps(call, dtype, fp: Fingerprint) -> None:
    x = _column([-1.0, 1.0, -1.0, 1.0], dtype)
    ones, zeros = np.ones(1, dtype), np.zeros(1, dtype)
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
    found = _closest(value, hypotheses, rtol=1e-3)
    if found is None:
        fp.eps = fp.normalize = f"unrecognized: |y| = {value:.6g} for x = [-1, 1, -1, 1], eps = {PROBE_EPS}"
        return
    where, divisor = found
    fp.eps = {"inside": "inside the square root: (x - mean) / sqrt(var + eps)",
              "outside": "OUTSIDE the square root: (x - mean) / (sqrt(var) + eps)",
              "ignored": "IGNORED: the given eps has no effect"}[where]
    fp.normalize = {"m": "divides by m (biased), as the paper",
                    "m-1": "divides by m - 1 (unbiased), unlike the paper"}[divisor]


def _probe_running(call, dtype, fp: Fingerprint) -> None:
    x = _column(RUNNING_PROBE, dtype)
    count = len(RUNNING_PROBE)
    batch_mean, batch_var = float(np.mean(RUNNING_PROBE)), float(np.var(RUNNING_PROBE))
    # none of 1/sqrt(var), sqrt(var) or 1 is close to the batch's mean and variances
    olds = (1.0, 5.0)
    try:
        news = [call("update_running", x, np.full(1, r, dtype), np.full(1, r, dtype), PROBE_MOMENTUM) for r in olds]
    except CandidateError as exc:
        fp.running_note = f"probe failed: {exc}"
        return

    def solve(k):
        a, b = (float(n[k].astype(np.float64)[0]) for n in news)
        keep = (b - a) / (olds[1] - olds[0])          # 1 - w
        w = 1.0 - keep
        stat = (a - keep * olds[0]) / w if abs(w) > 1e-12 else math.nan
        return w, stat

    (w_mean, s_mean), (w_var, s_var) = solve(0), solve(1)
    direction = lambda w: _closest(w, {"new": PROBE_MOMENTUM, "old": 1 - PROBE_MOMENTUM}, 1e-3)  # noqa: E731
    divisor = (_closest(s_var, {"m": batch_var, "m-1": batch_var * count / (count - 1)}, 1e-3)
               if math.isfinite(s_var) else None)
    fp.running = RunningConvention(PROBE_MOMENTUM, w_mean, w_var, s_mean, s_var, count, direction(w_mean),
                                   direction(w_var), divisor, batch_mean, batch_var)


def _probe_single_value(call, dtype, fp: Fingerprint) -> None:
    x = np.array([[0.5, -2.0, 7.0]], dtype=dtype)  # (1, 3): m = 1 in either layout
    gamma, beta = np.full(3, 1.5, dtype), np.array([0.25, -1.0, 2.0], dtype)
    try:
        y = call("forward_train", x, gamma, beta, 1e-5).astype(np.float64)
    except CandidateError as exc:
        raised = str(exc).split(" raised ", 1)[-1].splitlines()[0][:120]
        # raising on m = 1 is a convention (the exception is the cause); a bad return or a timeout is not
        fp.single_value = f"error ({raised})" if exc.__cause__ is not None else f"probe failed: {exc}"
        return
    if not np.all(np.isfinite(y)):
        fp.single_value = "NaN/inf, no error"
    elif np.allclose(y.reshape(-1), beta, rtol=1e-6, atol=1e-6):
        fp.single_value = "a value: y = beta (var = 0), no error"
    else:
        fp.single_value = f"a value: y = {np.array2string(y.reshape(-1), precision=4)}, no error"


def _probe_float32_offset(call, candidate, fp: Fingerprint) -> None:
    if "float32" not in tuple(candidate.dtypes):
        return
    rng = np.random.default_rng(1234)
    worst = None
    for mean, std in OFFSET_PROBES:
        x = (mean + std * rng.standard_normal((256, 3))).astype(np.float32)
        gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
        try:
            y = call("forward_train", x, gamma, beta, 1e-5).astype(np.float64)
        except CandidateError as exc:
            fp.float32_offset_note = f"probe failed at mean {mean:g}, std {std:g}: {exc}"
            return
        y_ref = reference.forward_train(x, gamma, beta, 1e-5, 1)[0]
        err = float(np.max(np.abs(y - y_ref))) if np.all(np.isfinite(y)) else math.inf
        error = err / float(np.max(np.abs(y_ref)))
        kappa = condition_number(x, 1, 1e-5)
        if worst is None or error > worst["error"]:
            worst = {"error": error, "mean": mean, "std": std, "kappa": kappa,
                     "u32_kappa": unit_roundoff(np.float32) * kappa}
    fp.float32_offset = worst


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

    def call(method, *args):
        return guard.call(candidate, method, *args)

    with np.errstate(all="ignore"):  # a candidate's NaN or inf is a finding, reported in the entry
        _probe_eps(call, dtype, fp)
        if callable(getattr(candidate, "update_running", None)):
            _probe_running(call, dtype, fp)
        _probe_single_value(call, dtype, fp)
        _probe_float32_offset(call, candidate, fp)
    return fp
