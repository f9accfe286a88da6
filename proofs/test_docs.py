"""The docs, the proofs and the kernels cannot drift apart: checks on docs/ itself.

* every displayed result of docs/derivation.md, read from its LaTeX into SymPy, equals
  the expression the proofs prove (so the page cannot be wrong where its quotes agree);
  a copy of the page with one sign flipped fails that check;
* every proof quotes (``>`` lines of its docstring) equations that appear verbatim in
  the step of docs/derivation.md its docstring names (``Step N``);
* every proof is linked from docs/derivation.md and every link there names a proof;
* the Python examples of docs/index.md run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest
import sympy as sp

from proofs import _latex
from proofs import _symbolic as sym
from proofs import test_eval_mode as ev
from proofs import test_running_stats as rs
from proofs._catalog import DERIVATION, ROOT, proofs
from proofs._symbolic import ConcreteBatch, concrete
from proofs.test_double_backward import double_backward_loss
from proofs.test_forward_backward import jacobian_entry

LINK = re.compile(r"\(proofs/(test_\w+)\.md#(test_\w+)\)")
STEP = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _squash(text: str) -> str:
    return " ".join(text.split())


def derivation_steps() -> dict[int, str]:
    text = DERIVATION.read_text(encoding="utf-8")
    starts = list(STEP.finditer(text)) + [None]
    return {int(a.group(1)): text[a.start():b.start() if b else len(text)]
            for a, b in zip(starts, starts[1:])}


@pytest.mark.parametrize("proof", proofs(), ids=lambda p: f"{p.module}::{p.name}")
def test_proof_quotes_its_step(proof):
    step = re.match(r"Steps? (\d+(?:(?:, | and )\d+)*)", proof.docstring)
    assert step, f"{proof.module}.{proof.name}: the docstring must start with 'Step N'"
    assert proof.quotes, f"{proof.module}.{proof.name} quotes nothing from docs/derivation.md"
    numbers = [int(n) for n in re.findall(r"\d+", step.group(1))]
    sections = _squash(" ".join(derivation_steps()[n] for n in numbers))
    for quote in proof.quotes:
        assert _squash(quote) in sections, (
            f"{proof.module}.{proof.name} quotes an equation that is not in step(s) {numbers} "
            f"of docs/derivation.md:\n  {quote}")


def test_every_proof_is_linked_and_every_link_is_a_proof():
    linked = set(LINK.findall(DERIVATION.read_text(encoding="utf-8")))
    existing = {(p.module, p.name) for p in proofs()}
    assert existing - linked == set(), "proofs that docs/derivation.md does not link"
    assert linked - existing == set(), "links in docs/derivation.md to no proof"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("page", ["index.md"])
def test_docs_examples_run(page):
    blocks = python_blocks(ROOT / "docs" / page)
    assert blocks, f"docs/{page} has no Python example"
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), {})


# ---------------------------------------------------------------- the displayed formulas are the proved ones
# Each display block of docs/derivation.md that states a result is read into SymPy
# (proofs/_latex.py) on a concrete batch, where every name means what the proofs prove:
# dx, g_gamma, ... are the closed forms of proofs._symbolic.CLOSED, J the proved Jacobian,
# L and L_2 the losses the proofs differentiate, mu, sigma^2, s, xhat the graph. A block
# holds when each of its equations holds for every value of its free indices.

def _graph_names(b: ConcreteBatch) -> dict:
    def element(name):
        return _latex.Element(lambda i: b.element(name, i))

    def proved(closed):
        return _latex.Element(lambda i: b.instantiate(closed, i))

    delta = _latex.Pairwise(lambda i, k: sp.Integer(int(i == k)))
    return {
        "m": b.m, "gamma": sym.gamma, "beta": sym.beta, "epsilon": sym.eps,
        "ddgamma": sym.ddgamma, "ddbeta": sym.ddbeta,
        "mu": b.mean, "sigma": sp.sqrt(b.var), "s": b.invstd,
        "x": _latex.Element(b.x), "xhat": _latex.Element(b.xhat), "y": _latex.Element(b.y),
        "dy": element("dy"), "ddx": element("ddx"), "one": _latex.Element(lambda i: sp.Integer(1)),
        "I": delta, "delta": delta,
        "L": b.loss(), "L_2": double_backward_loss(b),
        "dbeta": b.instantiate(sym.CLOSED["dbeta"], 1), "dgamma": b.instantiate(sym.CLOSED["dgamma"], 1),
        "dx": proved(sym.CLOSED["dx"]),
        "J": _latex.Pairwise(lambda i, k: jacobian_entry(b.xhat_s(i), b.xhat_s(k), int(i == k)).xreplace({sym.m: b.m})),
        "P": b.instantiate(sym.P, 1), "Q": b.instantiate(sym.Q, 1), "R": b.instantiate(sym.R, 1),
        "M": _latex.Function(lambda v: _latex.total(v) / b.m),
        "g_gamma": b.instantiate(sym.CLOSED["ggamma"], 1),
        "g_dy": proved(sym.CLOSED["gdy"]), "g_x": proved(sym.CLOSED["gx"]),
    }


def _per_position(b: ConcreteBatch) -> dict:
    """Step 6: gamma_i per value; dx is SymPy's gradient of that graph's loss."""
    gammas = _latex.Element(lambda i: sp.Symbol(f"gamma_pos_{i}", real=True))
    loss = b.total(lambda i: b.element("dy", i) * (gammas.f(i) * b.xhat(i) + sym.beta))
    return {"gamma": gammas, "dx": _latex.Element(lambda i: sp.diff(loss, b.x(i)))}


def _eval_mode(b: ConcreteBatch) -> dict:
    """Step 7: the running statistics are constants; y and dx are bnref's eval-mode forms."""
    var_run = sp.Symbol("var_run", positive=True)
    s_value = (var_run + sym.eps) ** sp.Rational(-1, 2)
    on = {ev.s_run: s_value}

    def at(expr, i):
        return expr.xreplace({**on, ev.x_j: b.x(i), sym.dy_j: b.element("dy", i)})
    loss = b.total(lambda i: b.element("dy", i) * at(ev.Y_EVAL, i))
    dx_eval_batch = ev.DX_EVAL.xreplace({ev.s_run: b.invstd})
    return {
        "s_run": s_value, "mu_run": ev.mu_run, "sigma_run": sp.sqrt(var_run),
        "y": _latex.Element(lambda i: at(ev.Y_EVAL, i)),
        "dx": _latex.Element(lambda i: at(ev.DX_EVAL, i)),
        "xhat^run": _latex.Element(lambda i: (b.x(i) - ev.mu_run) * s_value),
        "dgamma": sp.diff(loss, sym.gamma), "dbeta": sp.diff(loss, sym.beta),
        "dx^train": _latex.Element(lambda i: b.instantiate(sym.CLOSED["dx"], i)),
        "dx^eval": _latex.Element(lambda i: dx_eval_batch.xreplace({sym.dy_j: b.element("dy", i)})),
    }


def _running(b: ConcreteBatch) -> tuple[dict, dict]:
    """Step 8: the update (old values before, proved update after), the model's expectation."""
    mu_run, var_run = sp.symbols("mu_run var_run", real=True)
    names = {"momentum": rs.momentum, "mu_run": mu_run, "sigma_run": sp.sqrt(var_run),
             "E": _latex.Function(lambda v: rs.expectation(b, v)),
             "mu_pop": rs.mu, "sigma_pop": sp.sqrt(rs.sigma2)}
    updated = {"mu_run": rs.UPDATE_TORCH.xreplace({rs.old: mu_run, rs.new: b.mean}),
               "sigma_run": sp.sqrt(rs.update_running_var(var_run, b.var, b.m))}
    alpha, r0 = sp.Symbol("alpha", positive=True), sp.Symbol("r_0")
    batches = _latex.Element(lambda t: sp.Symbol(f"b_{t}"))

    def unrolled(steps):
        r = r0
        for t in range(1, steps + 1):
            r = rs.UPDATE_TORCH.xreplace({rs.old: r, rs.new: batches.f(t), rs.momentum: alpha})
        return r
    names.update({"alpha": alpha, "r_0": r0, "b": batches, "r": _latex.Element(unrolled)})
    return names, updated


def _one_pass(b: ConcreteBatch) -> dict:
    """Step 11: E is the average over the batch; the block statistics about a center K_block."""
    center = sp.Symbol("K_block", real=True)
    shifted = _latex.Element(lambda i: b.x(i) - center)
    return {"E": _latex.Function(lambda v: _latex.total(v) / b.m),
            "K_block": center, "m_block": b.m, "xtilde": shifted, "mu_block": b.mean,
            "V": b.m * b.var, "S_1": b.total(shifted.f), "S_2": b.total(lambda i: shifted.f(i) ** 2)}


def _chan(_: ConcreteBatch) -> dict:
    """Step 11: blocks A (2 values) and B (3 values); AB is their union, as in the proof."""
    a, c = ConcreteBatch(2, tag="A"), ConcreteBatch(3, tag="B")
    union = [a.x(i) for i in a.indices] + [c.x(i) for i in c.indices]
    mean_ab = sp.Add(*union) / len(union)
    return {"mu_A": a.mean, "mu_B": c.mean, "m_A": a.m, "m_B": c.m, "V_A": a.m * a.var, "V_B": c.m * c.var,
            "Delta": c.mean - a.mean, "mu_AB": mean_ab, "V_AB": sp.Add(*((v - mean_ab) ** 2 for v in union))}


@dataclass(frozen=True)
class Displayed:
    """A display block of the page, found by a fragment of its LaTeX, and the names it needs."""
    fragment: str
    extra: Callable = lambda b: {}      # more names, overriding the graph's
    updated: Callable = lambda b: {}    # the values after the update, for ``\\leftarrow``


CHECKED = [
    Displayed(r"\mu = \frac1m\sum_i x_i"),
    Displayed(r"d\beta = \frac{\partial L}{\partial \beta}"),
    Displayed(r"\frac{\partial\mu}{\partial x_j} = \frac1m"),
    Displayed(r"J_{ij} = \frac{\partial \hat x_i}{\partial x_j}"),
    Displayed(r"dx = \gamma J^\top dy"),
    Displayed(r"dx_i = \frac{\gamma\, s}{m}"),
    Displayed(r"\gamma_{chw}:\quad dx_i", _per_position),
    Displayed(r"y_i = \gamma\, s_{run}", _eval_mode),
    Displayed(r"dx_i = \gamma\, s_{run}\, dy_i", _eval_mode),
    Displayed(r"dx^{train}_i - dx^{eval}_i", _eval_mode),
    Displayed(r"\mu_{run} = 0,\ \sigma^2_{run} = 1", _eval_mode),
    Displayed(r"\mu_{run} \leftarrow", lambda b: _running(b)[0], lambda b: _running(b)[1]),
    Displayed(r"\sigma^2 = \frac1m\sum_i x_i^2 - \frac1{m^2}"),
    Displayed(r"\mathbb E\big[\sigma^2\big]", lambda b: _running(b)[0]),
    Displayed(r"r_T = (1-\alpha)^T r_0", lambda b: _running(b)[0]),
    Displayed(r"L_2 = \sum_i ddx_i\,dx_i"),
    Displayed(r"L_2 = \frac{\gamma s}{m}"),
    Displayed(r"g_\gamma ="),
    Displayed(r"g_{dy} ="),
    Displayed(r"g_x ="),
    Displayed(r"\sum_i dx_i = 0"),
    Displayed(r"\sum_i dx_i\,\hat x_i ="),
    Displayed(r"\frac1m\sum_i \hat x_i = 0"),
    Displayed(r"\sigma^2 = \frac1m\sum_i x_i^2 - \mu^2", _one_pass),
    Displayed(r"\mu_{block} = K_{block}", _one_pass),
    Displayed(r"\Delta = \mu_B - \mu_A", _chan),
    Displayed(r"\sum_i (x_i - \mu)^2 = \sum_i x_i^2 - m"),
]

#: display blocks that state no formula the proofs read back, and why
NOT_READ = {
    r"x \to \mu": "the graph: its edges, not a formula",
    r"m = N H W": "a change of index, not a formula (test_4d_gradients_are_per_channel proves its content)",
    r"\mathrm{BN}(\mathcal T x)": "a statement about maps (proved on a 4D tensor of symbols in test_channels.py)",
    r"\text{momentum}_{\text{Keras/Flax}}": "a renaming of a parameter (test_momentum_conventions)",
    r"\hat x(x + K\mathbf 1)": "function notation (test_shift_invariance)",
    r"\hat x_\epsilon(a x)": "function notation (test_scale_invariance)",
    r"m = 2:\quad \hat x = \mp": "a sign that depends on the order of the two values (test_two_values_closed_form)",
    r"\rho = \frac{\mathbb E[x^2]}{\sigma^2}": "a definition",
    r"\text{float32: }": "numbers, asserted by test_float32_worked_example",
    r"\text{4096 values, }": "numbers, asserted by test_float32_large_batch",
    r"\sigma^2(x - K\mathbf 1)": "function notation (test_shift_leaves_variance_unchanged)",
    r"S_2 \le 16\,V": "an inequality (test_block_m2_accepts_only_bounded_cancellation)",
    r"|y_i - y^{64}_i| \le u_h": "inequalities (test_one_rounding_of_the_float64_result)",
    r"v = 1 + 2^{-11} + 2^{-40}": "numbers, asserted in rationals by test_rounding_through_float32_is_not_correct_rounding",
    r"v = 1 + 2^{-8} + 2^{-40}": "numbers, asserted in rationals by test_rounding_through_float32_is_not_correct_rounding",
    r"\text{float16: } 65504^2": "numbers and bounds, asserted by test_float64_accumulation_of_half_data_cannot_overflow",
    r"\text{float16: } 255^2": "numbers, asserted by test_half_precision_squares_overflow",
    r"m = 4097,\ x = (1, 0, \dots, 0)": "numbers, asserted by test_output_overflow_is_ieee_infinity",
    r"\text{float16: } 2048 + 1": "numbers, asserted by test_half_precision_running_sum_stalls",
    r"\sigma^2_{run} = 10^5:": "numbers, asserted by test_float32_statistics_downcast_to_float16",
}

#: batch sizes the blocks are read on (with the proofs' symbols, two sizes tell m apart)
READ_SIZES = (3, 4)


def _reading(entry: Displayed, size: int) -> tuple[_latex.Reading, ConcreteBatch]:
    b = concrete(size)
    return _latex.Reading(size, {**_graph_names(b), **entry.extra(b)}, entry.updated(b)), b


def _block(page: str, fragment: str) -> str:
    found = [block for block in _latex.display_blocks(page) if fragment in block]
    assert len(found) == 1, f"{len(found)} display blocks of docs/derivation.md contain {fragment!r}"
    return found[0]


def check_displayed(block: str, entry: Displayed, size: int) -> None:
    reading, b = _reading(entry, size)
    _latex.check_block(block, reading, lambda e: b.reduce(e) == 0)


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize("entry", CHECKED, ids=lambda e: e.fragment)
def test_displayed_formula_is_the_proved_one(entry, size):
    """A displayed result of docs/derivation.md, read into SymPy, equals the expression the proofs prove."""
    check_displayed(_block(DERIVATION.read_text(encoding="utf-8"), entry.fragment), entry, size)


def test_every_display_block_is_read_or_said_why_not():
    blocks = _latex.display_blocks(DERIVATION.read_text(encoding="utf-8"))
    fragments = [e.fragment for e in CHECKED] + list(NOT_READ)
    for block in blocks:
        owners = [f for f in fragments if f in block]
        assert len(owners) == 1, f"display block claimed by {owners}, not by exactly one entry:\n  {block}"


def _flip_a_sign(block: str) -> str:
    """The block with its last minus made a plus, else its last plus a minus, else its last side
    negated (or, for ``= 0`` where a sign cannot matter, made 1)."""
    for old, new in (("-", "+"), ("+", "-"), ("= 0", "= 1"), ("= ", "= -")):
        k = block.rfind(old)
        if k >= 0:
            return block[:k] + new + block[k + len(old):]
    raise AssertionError(f"no sign to flip in {block!r}")


@pytest.mark.parametrize("entry", CHECKED, ids=lambda e: e.fragment)
def test_a_wrong_sign_in_the_page_is_caught(entry):
    """The check of the check: the block, one sign flipped in a copy of the page, fails."""
    page = DERIVATION.read_text(encoding="utf-8")
    block = _block(page, entry.fragment)
    wrong_page = page.replace(block, _flip_a_sign(block))
    assert wrong_page != page
    (wrong,) = set(_latex.display_blocks(wrong_page)) - set(_latex.display_blocks(page))
    with pytest.raises(AssertionError, match="not equal|differ in shape"):
        check_displayed(wrong, entry, READ_SIZES[0])
