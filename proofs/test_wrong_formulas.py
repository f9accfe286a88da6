r"""The proofs can fail: each closed form with one term dropped (proofs._symbolic.WRONG) is rejected
by the general-m proof, by the m = 3 proof and by the comparison with bnref's kernels.

Without these, a reduction that returned 0 for everything would make every proof pass.
"""
from __future__ import annotations

import pytest

from proofs import _numeric as num
from proofs._symbolic import CLOSED, WRONG, concrete, symbolic
from proofs.test_double_backward import compare_double_backward, prove_double_backward
from proofs.test_forward_backward import compare_backward, prove_dx_concrete, prove_dx_general

DX_VARIANTS = ["dx", "dx_no_mean"]
DOUBLE_BACKWARD_VARIANTS = ["ggamma", "gdy", "gx"]


@pytest.mark.parametrize("variant", DX_VARIANTS)
def test_wrong_dx_fails_general_m(variant):
    with pytest.raises(AssertionError, match="not an identity"):
        prove_dx_general(WRONG[variant])


@pytest.mark.parametrize("variant", DX_VARIANTS)
def test_wrong_dx_fails_concrete_m(variant):
    with pytest.raises(AssertionError, match="not an identity"):
        prove_dx_concrete(3, WRONG[variant])


@pytest.mark.parametrize("variant", DX_VARIANTS)
def test_wrong_dx_fails_against_bnref(variant):
    with pytest.raises(AssertionError, match="bnref and the proved closed form differ"):
        compare_backward(num.cases()[0], dx=WRONG[variant])


@pytest.mark.parametrize("variant", DOUBLE_BACKWARD_VARIANTS)
def test_wrong_double_backward_fails_general_m(variant):
    with pytest.raises(AssertionError, match="not an identity"):
        prove_double_backward(symbolic(), [symbolic().some_index], **{variant: WRONG[variant]})


@pytest.mark.parametrize("variant", DOUBLE_BACKWARD_VARIANTS)
def test_wrong_double_backward_fails_concrete_m(variant):
    with pytest.raises(AssertionError, match="not an identity"):
        prove_double_backward(concrete(3), [1], **{variant: WRONG[variant]})


@pytest.mark.parametrize("variant", DOUBLE_BACKWARD_VARIANTS)
def test_wrong_double_backward_fails_against_bnref(variant):
    with pytest.raises(AssertionError, match="bnref and the proved closed form differ"):
        compare_double_backward(num.cases()[0], **{variant: WRONG[variant]})


@pytest.mark.parametrize("batch", [symbolic, lambda: concrete(3)], ids=["general-m", "m=3"])
def test_wrong_dx_breaks_the_identities(batch):
    """sum dx = 0 needs the sum(dy) term; sum dx xhat = ... needs the xhat term."""
    from proofs._symbolic import P, eps, gamma, j, s
    b = batch()
    with pytest.raises(AssertionError, match="not an identity"):
        b.assert_identity(b.total(lambda i: b.instantiate(WRONG["dx_no_mean"], i)), 0, "sum dx")
    lhs = b.total(lambda i: b.instantiate(WRONG["dx"], i) * b.xhat_s(i))
    with pytest.raises(AssertionError, match="not an identity"):
        b.assert_identity(lhs, b.instantiate(gamma * s * P, j) * eps / (b.var + eps), "sum dx xhat")


def test_variants_really_differ():
    """Each wrong variant differs from its closed form (so the tests above test something)."""
    for name, wrong in WRONG.items():
        assert (wrong - CLOSED[name.split("_")[0]]).expand() != 0, name
