r"""Batch-norm conventions as data: where eps goes, which variance normalizes and which is stored,
and what ``momentum`` weighs.

Frameworks agree on the normalization ``y = gamma (x - mean) / sqrt(var + eps) + beta``
and differ in the details a port gets wrong. A :class:`Convention` names each detail;
:data:`CONVENTIONS` holds the frameworks' ones. The running-statistics update,

.. math::
    \mu_{run} \leftarrow (1-w)\,\mu_{run} + w\,\mu_B,\qquad
    \sigma^2_{run} \leftarrow (1-w)\,\sigma^2_{run} + w\,c\,\sigma^2_B,

with ``w`` the weight on the new batch statistic (``momentum`` in PyTorch's form,
``1 - momentum`` in Keras' and Flax's) and ``c = m/(m-1)`` for an unbiased running
variance (1 for a biased one), is written once, in :meth:`Convention.update_running`:
:func:`bnref.update_running`, the oracle's fingerprint and the test suite's mutants
all call it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Convention", "CONVENTIONS", "PYTORCH", "KERAS", "FLAX", "EPS_PLACEMENTS", "VARIANCES",
           "MOMENTUM_FORMS"]

#: eps added to the variance inside the square root, or to the standard deviation outside it
EPS_PLACEMENTS = ("inside", "outside")
#: a variance divided by m (biased, the paper's) or by m - 1 (unbiased)
VARIANCES = ("biased", "unbiased")
#: momentum weighs the new batch statistic (PyTorch) or the old running value (Keras, Flax); or it is
#: ignored and a fixed weight (``fixed_weight``) lies on the new value (a hard-coded update)
MOMENTUM_FORMS = ("new", "old", "fixed")


@dataclass(frozen=True)
class Convention:
    """One framework's batch-norm conventions.

    Attributes:
        name: a short label (``"pytorch"``).
        eps: ``"inside"``: ``1/sqrt(var + eps)``; ``"outside"``: ``1/(sqrt(var) + eps)``.
        normalize: the variance ``x`` is normalized with in training, ``"biased"`` or ``"unbiased"``.
        running_var: the batch variance the running variance moves toward, ``"biased"`` or ``"unbiased"``.
        momentum: ``"new"`` if ``momentum`` is the weight on the batch statistic, ``"old"`` if on the
            running value, ``"fixed"`` if the given momentum is ignored and ``fixed_weight`` lies on
            the batch statistic.
        default_momentum, default_eps: the framework's defaults, in its own momentum form.
        fixed_weight: the weight on the batch statistic of the ``"fixed"`` form, in (0, 1].
        debiased: the running statistics reported over several steps are a debiased moving average
            (Haiku's ``ExponentialMovingAverage``): the average of a zero-started one divided by
            ``1 - (1 - w)^t`` after ``t`` steps, whatever the initial value.
    """

    name: str
    eps: str = "inside"
    normalize: str = "biased"
    running_var: str = "unbiased"
    momentum: str = "new"
    default_momentum: float = 0.1
    default_eps: float = 1e-5
    fixed_weight: float | None = None
    debiased: bool = False

    def __post_init__(self):
        for field, allowed in (("eps", EPS_PLACEMENTS), ("normalize", VARIANCES), ("running_var", VARIANCES),
                               ("momentum", MOMENTUM_FORMS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"Convention.{field} must be one of {allowed}; got {getattr(self, field)!r}")
        if (self.momentum == "fixed") != (self.fixed_weight is not None) or (
                self.fixed_weight is not None and not 0 < self.fixed_weight <= 1):
            raise ValueError(f"Convention.fixed_weight must be in (0, 1] exactly when momentum is 'fixed'; got "
                             f"momentum={self.momentum!r}, fixed_weight={self.fixed_weight!r}")

    def weight(self, momentum: float) -> float:
        """``w``, the weight on the new batch statistic, for ``momentum`` in this convention's form."""
        if self.momentum == "fixed":
            return self.fixed_weight
        return momentum if self.momentum == "new" else 1.0 - momentum

    def variance_factor(self, count: int, which: str) -> float:
        """The factor that turns the biased batch variance into the ``which`` one (``m/(m-1)`` or 1)."""
        return count / (count - 1) if which == "unbiased" else 1.0

    def invstd(self, var, eps):
        """``1/sqrt(var + eps)`` or ``1/(sqrt(var) + eps)``, elementwise, float64."""
        var = np.asarray(var, dtype=np.float64)
        return 1.0 / np.sqrt(var + eps) if self.eps == "inside" else 1.0 / (np.sqrt(var) + eps)

    def update_running(self, running_mean, running_var, mean, var, count: int, momentum: float):
        """The running statistics after one batch, in float64.

        Args:
            running_mean, running_var: ``(C,)`` the old values.
            mean, var: ``(C,)`` the batch mean and its *biased* variance.
            count: ``m``, values per channel in the batch (>= 2 for an unbiased running variance).
            momentum: in this convention's form.

        Returns:
            ``(new_mean, new_var)`` as float64 arrays.
        """
        w = self.weight(momentum)
        batch_var = np.asarray(var, dtype=np.float64) * self.variance_factor(count, self.running_var)
        new_mean = (1.0 - w) * np.asarray(running_mean, dtype=np.float64) + w * np.asarray(mean, dtype=np.float64)
        new_var = (1.0 - w) * np.asarray(running_var, dtype=np.float64) + w * batch_var
        return new_mean, new_var

    def update_running_steps(self, running_mean, running_var, means, variances, counts, momentum: float,
                             step: int = 0):
        """The running statistics after one batch per entry of ``means``, ``variances``, ``counts``, float64.

        Each step is :meth:`update_running`. A debiased average starts from zero instead of the given
        values and is divided by ``1 - (1 - w)^t``, ``t`` the steps taken, ``step`` of them before these.

        Raises:
            ValueError: a debiased average with ``step`` > 0 (its zero-started state is not given).
        """
        if self.debiased and step:
            raise ValueError(f"a debiased average starts from step 0; got step={step}")
        mean, var = (np.zeros_like(np.asarray(a, np.float64)) if self.debiased else np.asarray(a, np.float64)
                     for a in (running_mean, running_var))
        for batch_mean, batch_var, count in zip(means, variances, counts):
            mean, var = self.update_running(mean, var, batch_mean, batch_var, count, momentum)
        if self.debiased:
            correction = 1.0 - (1.0 - self.weight(momentum)) ** len(means)
            mean, var = mean / correction, var / correction
        return mean, var

    def describe(self) -> str:
        eps = "sqrt(var + eps)" if self.eps == "inside" else "sqrt(var) + eps"
        weighs = {"new": "weighs the batch statistic", "old": "weighs the running value",
                  "fixed": f"is ignored (fixed weight {self.fixed_weight:g} on the batch statistic)"}[self.momentum]
        return (f"{self.name}: x normalized by {eps} with the {self.normalize} variance; running variance "
                f"{self.running_var}; momentum {weighs} (default {self.default_momentum:g}, "
                f"eps {self.default_eps:g})")


#: torch.nn.BatchNorm*: new-weighted momentum 0.1, unbiased running variance, eps 1e-5
PYTORCH = Convention("pytorch")
#: keras.layers.BatchNormalization: old-weighted momentum 0.99, biased running variance, eps 1e-3
KERAS = Convention("keras", running_var="biased", momentum="old", default_momentum=0.99, default_eps=1e-3)
#: flax.linen.BatchNorm: old-weighted momentum 0.99, biased running variance, eps 1e-5
FLAX = Convention("flax", running_var="biased", momentum="old", default_momentum=0.99, default_eps=1e-5)

CONVENTIONS: dict[str, Convention] = {c.name: c for c in (PYTORCH, KERAS, FLAX)}

