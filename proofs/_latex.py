r"""Read the displayed formulas of docs/derivation.md into SymPy, to compare them with what the proofs prove.

A display block ``$$ .. $$`` is a list of clauses separated by ``\qquad``; a clause is
``[conditions :\quad] side = side [= side ..]`` (or ``side \leftarrow side``). Each side is
read by a small recursive-descent reader for the LaTeX this page writes -- ``\frac``
(also ``\frac1m``), ``\sqrt``, powers, subscripts, ``\sum`` over an index or over a
vector, ``\frac{\partial A}{\partial B}`` (a SymPy derivative), juxtaposition as product,
``^\top`` -- and evaluated in a :class:`Reading`: a concrete batch and the meaning of
every name (``dy``, ``\hat x``, ``M(..)``, ``g_\gamma``, ...). The reader is strict: a
command or a name it does not know is a ``ValueError``, never silently dropped
(``sympy.parsing.latex.parse_latex`` drops what it cannot read, so it is not used).

Values are SymPy scalars or ``sympy.Matrix`` (an unsubscripted element quantity such as
``dy`` is the column vector of its elements; ``J`` and ``I`` are m x m). A scalar added
to a vector is broadcast, as the page writes ``ddx - M(ddx)``.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

#: letters that index the elements of a batch (or, ``t`` and ``T``, the updates of step 8)
INDEX_LETTERS = frozenset("ijktT")
#: multi-character names, longest first, with the name the reader gives them
NAMES = [(r"dd\gamma", "ddgamma"), (r"dd\beta", "ddbeta"), (r"d\gamma", "dgamma"), (r"d\beta", "dbeta"),
         ("ddx", "ddx"), ("dy", "dy"), ("dx", "dx"), (r"\hat x", "xhat"), (r"\tilde x", "xtilde"),
         (r"\mathbf 1", "one"), (r"\text{momentum}", "momentum"), (r"\mathbb E", "E")]
GREEK = {"alpha", "beta", "gamma", "delta", "Delta", "epsilon", "mu", "sigma"}
SKIPPED = {r"\Big", r"\big", r"\Bigl", r"\Bigr", r"\bigl", r"\bigr", r"\left", r"\right", r"\textstyle",
           r"\,", r"\;", r"\!", r"\ ", r"\quad", r"\cdot"}
_TOKEN = re.compile("|".join([re.escape(latex) for latex, _ in NAMES]
                             + [r"\\[A-Za-z]+", r"\\[,;! ]", r"\d+", r"[A-Za-z]", r"[-+=(){}\[\]^_,:/]"]))


@dataclass(frozen=True)
class Token:
    kind: str      # "name", "cmd", "num", "punct"
    text: str


def tokenize(latex: str) -> list[Token]:
    tokens, pos = [], 0
    names = dict(NAMES)
    for match in _TOKEN.finditer(latex):
        gap = latex[pos:match.start()]
        if gap.strip():
            raise ValueError(f"cannot read {gap!r} in {latex!r}")
        pos = match.end()
        text = match.group()
        if text in SKIPPED:
            continue
        if text in names:
            tokens.append(Token("name", names[text]))
        elif text.startswith("\\") and text[1:] in GREEK:
            tokens.append(Token("name", text[1:]))
        elif text.startswith("\\"):
            tokens.append(Token("cmd", text))
        elif text.isdigit():
            tokens.append(Token("num", text))
        elif text.isalpha():
            tokens.append(Token("name", text))
        else:
            tokens.append(Token("punct", text))
    if latex[pos:].strip():
        raise ValueError(f"cannot read {latex[pos:]!r} in {latex!r}")
    return tokens


# ---------------------------------------------------------------- what names mean
@dataclass(frozen=True)
class Element:
    """A quantity with one value per element: ``f(i)``; unsubscripted, the column vector."""
    f: Callable


@dataclass(frozen=True)
class Pairwise:
    """A quantity with one value per pair of elements (a matrix): ``f(i, j)``."""
    f: Callable


@dataclass(frozen=True)
class Function:
    """A name applied to a bracketed argument: ``M(dy)``, ``\\mathbb E[x^2]``."""
    f: Callable


@dataclass
class Reading:
    """The meaning of the page's names on a batch of ``size`` elements.

    ``names`` maps a reader name (``"dy"``, ``"g_gamma"``, ``"s_run"``, ``"xhat^run"``) to a
    value, an :class:`Element`, a :class:`Pairwise` or a :class:`Function`; ``updated`` gives
    the value after the update for the left side of a ``\\leftarrow`` clause.
    """
    size: int
    names: dict
    updated: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)

    def lookup(self, name: str, indices: tuple, after_update: bool = False):
        table = {**self.names, **self.updated} if after_update else self.names
        if name in INDEX_LETTERS and not indices:
            return sp.Integer(self.index[name])
        if name not in table:
            raise ValueError(f"the page uses {name!r}, which the proofs give no meaning")
        value = table[name]
        if isinstance(value, Element):
            if indices:
                (i,) = indices
                return value.f(i)
            return sp.Matrix([value.f(i) for i in range(1, self.size + 1)])
        if isinstance(value, Pairwise):
            if indices:
                return value.f(*indices)
            return sp.Matrix(self.size, self.size, lambda r, c: value.f(r + 1, c + 1))
        if indices:
            raise ValueError(f"{name!r} takes no index")
        return value


# ---------------------------------------------------------------- arithmetic on scalars and vectors
def _is_matrix(v):
    return isinstance(v, sp.MatrixBase)


def add(a, b):
    if _is_matrix(a) and not _is_matrix(b):
        return a + b * sp.ones(*a.shape)
    if _is_matrix(b) and not _is_matrix(a):
        return a * sp.ones(*b.shape) + b
    if _is_matrix(a) and a.shape != b.shape:
        raise AssertionError(f"adding a {a.shape} to a {b.shape} value")
    return a + b


def mul(a, b):
    if _is_matrix(a) and _is_matrix(b):
        if a.shape[1] != b.shape[0]:
            raise AssertionError(f"multiplying a {a.shape} by a {b.shape} value")
        return a * b
    return a * b


def power(a, e):
    if _is_matrix(a):
        if a.shape[1] != 1:
            raise ValueError("only a vector is raised to a power (elementwise)")
        return a.applyfunc(lambda v: v**e)
    return a**e


def total(v):
    if not _is_matrix(v):
        raise ValueError("an unindexed sum needs a vector")
    return sp.Add(*v)


# ---------------------------------------------------------------- the reader
class Reader:
    """One side of a clause: ``Reader(tokens).expression()`` returns ``f(reading) -> value``."""

    def __init__(self, tokens: list[Token], after_update: bool = False):
        self.tokens, self.pos = tokens, 0
        self.bound: list[str] = []
        self.free: set[str] = set()
        self.after_update = after_update

    def peek(self, text=None):
        token = self.tokens[self.pos] if self.pos < len(self.tokens) else None
        return token if text is None or (token and token.text == text) else None

    def take(self, text=None) -> Token:
        token = self.peek()
        if token is None or (text is not None and token.text != text):
            raise ValueError(f"expected {text or 'more'} at {self.rest()!r}")
        self.pos += 1
        return token

    def rest(self):
        return " ".join(t.text for t in self.tokens[self.pos:])

    def done(self):
        if self.pos != len(self.tokens):
            raise ValueError(f"cannot read the end {self.rest()!r}")

    # expression := [+-] term (+- term)*
    def expression(self):
        sign = 1
        if self.peek("-") or self.peek("+"):
            sign = -1 if self.take().text == "-" else 1
        first = self.term()
        parts = [(sign, first)]
        while self.peek("-") or self.peek("+"):
            sign = -1 if self.take().text == "-" else 1
            parts.append((sign, self.term()))

        def value(r):
            out = 0
            for sign, part in parts:
                out = add(out, mul(sign, part(r)))
            return out
        return value

    def at_term_end(self):
        token = self.peek()
        return token is None or token.text in {"+", "-", ")", "]", "}", "=", ",", ":", r"\leftarrow"}

    # term := factor factor ... (a \sum takes the rest of the term as its body)
    def term(self):
        factors = []
        while not self.at_term_end():
            if self.peek(r"\sum"):
                factors.append(self.summation())
                break
            if self.peek("/"):
                self.take("/")
                divisor = self.factor()
                factors.append(lambda r, d=divisor: 1 / d(r))
                continue
            factors.append(self.factor())
        if not factors:
            raise ValueError(f"expected a term at {self.rest()!r}")

        def value(r):
            out = factors[0](r)
            for f in factors[1:]:
                out = mul(out, f(r))
            return out
        return value

    def summation(self):
        self.take(r"\sum")
        index, lo, hi = None, None, None
        if self.peek("_"):
            self.take("_")
            if self.peek("{"):
                self.take("{")
                index = self.take().text
                self.take("=")
                lo = self.expression()
                self.take("}")
            else:
                index = self.take().text
            if index not in INDEX_LETTERS:
                raise ValueError(f"sum over {index!r}, not an index")
        if self.peek("^"):
            self.take("^")
            hi = self.argument()
        self.bound.append(index)
        body = self.term()
        self.bound.pop()

        def value(r):
            if index is None:
                return total(body(r))
            first = int(lo(r)) if lo else 1
            last = int(hi(r)) if hi else r.size
            out = 0
            outer = dict(r.index)
            for k in range(first, last + 1):
                r.index[index] = k
                out = add(out, body(r))
            r.index = outer
            return out
        return value

    def argument(self):
        """A group ``{..}`` or a single token (``\\frac1m``, ``^2``, ``^T``)."""
        if self.peek("{"):
            self.take("{")
            inner = self.expression()
            self.take("}")
            return inner
        token = self.take()
        if token.kind == "num":
            if len(token.text) > 1:   # \frac12: one digit per argument
                self.tokens[self.pos - 1:self.pos] = [Token("num", token.text[0]), Token("num", token.text[1:])]
                token = self.tokens[self.pos - 1]
            return lambda r, v=sp.Integer(token.text): v
        if token.kind == "name":
            return self.atom_value(token.text, (), {})
        raise ValueError(f"cannot read the argument {token.text!r}")

    def factor(self):
        token = self.peek()
        if token.text == r"\frac":
            self.take()
            if self.peek(r"\partial") or (self.peek("{") and self.tokens[self.pos + 1].text == r"\partial"):
                return self.derivative()
            num, den = self.argument(), self.argument()
            base = lambda r: mul(num(r), 1 / den(r))  # noqa: E731
        elif token.text == r"\sqrt":
            self.take()
            inner = self.argument()
            base = lambda r: sp.sqrt(inner(r))  # noqa: E731
        elif token.text in {"(", "["}:
            self.take()
            base = self.expression()
            self.take(")" if token.text == "(" else "]")
        elif token.kind == "num":
            self.take()
            base = lambda r, v=sp.Integer(token.text): v  # noqa: E731
        elif token.kind == "name":
            return self.atom()
        else:
            raise ValueError(f"the reader does not know {token.text!r} (at {self.rest()!r})")
        return self.postfix(base)

    def derivative(self):
        braced = self.peek("{")
        if braced:
            self.take("{")
        self.take(r"\partial")
        num = self.atom()
        if braced:
            self.take("}")
            self.take("{")
        self.take(r"\partial")
        den = self.atom()
        if braced:
            self.take("}")
        return lambda r: sp.diff(num(r), den(r))

    def script(self):
        """The raw content of a sub- or superscript: a list of tokens."""
        if self.peek("{"):
            self.take("{")
            depth, out = 1, []
            while True:
                token = self.take()
                depth += {"{": 1, "}": -1}.get(token.text, 0)
                if depth == 0:
                    return out
                out.append(token)
        return [self.take()]

    def atom(self):
        name = self.take().text
        indices, suffix, exponent, transpose = (), "", None, False
        while self.peek("_") or self.peek("^"):
            kind = self.take().text
            if kind == "^" and self.peek(r"\top"):
                self.take()
                transpose = True
                continue
            start = self.pos
            content = self.script()
            texts = [t.text for t in content]
            if kind == "_" and texts and all(t in INDEX_LETTERS for t in texts):
                indices = tuple(texts)
            elif kind == "^" and len(texts) > 1 and all(t.isalpha() for t in texts):
                suffix += "^" + "".join(texts)          # x^{run}, dx^{train}
            elif kind == "_":
                suffix += "_" + "".join(texts)          # s_{run}, mu_{AB}, S_1, g_\gamma
            else:                                       # an exponent: read it as an expression
                self.pos = start
                exponent = self.argument()
        value = self.atom_value(name + suffix, indices, {})
        if name + suffix in {"M", "E"} and (self.peek("(") or self.peek("[")):
            bracket = self.take().text
            argument = self.expression()
            self.take(")" if bracket == "(" else "]")
            function = value
            value = lambda r: function(r).f(argument(r))  # noqa: E731
            return self.postfix(value)
        if transpose or exponent:
            base = value
            value = lambda r: power(base(r), exponent(r)) if exponent else base(r)  # noqa: E731
            if transpose:
                inner = value
                value = lambda r: inner(r).T  # noqa: E731
        return self.postfix(value)

    def atom_value(self, name, indices, _):
        for letter in indices + ((name,) if name in INDEX_LETTERS else ()):
            if letter not in self.bound:
                self.free.add(letter)
        after_update = self.after_update

        def value(r):
            return r.lookup(name, tuple(r.index[i] for i in indices), after_update)
        return value

    def postfix(self, base):
        while self.peek("^"):
            self.take("^")
            if self.peek(r"\top"):
                self.take()
                inner = base
                base = lambda r, inner=inner: inner(r).T  # noqa: E731
            else:
                exponent, inner = self.argument(), base
                base = lambda r, inner=inner, exponent=exponent: power(inner(r), exponent(r))  # noqa: E731
        return base


# ---------------------------------------------------------------- blocks and clauses
def display_blocks(markdown: str) -> list[str]:
    """The ``$$ .. $$`` blocks of a page, in order."""
    return [b.strip() for b in re.findall(r"\$\$(.*?)\$\$", markdown, re.DOTALL)]


def _split_top(tokens: list[Token], separators: set[str]) -> list[tuple[str | None, list[Token]]]:
    """Split at separators outside brackets: ``[(separator before, tokens), ..]``."""
    parts, current, depth, before = [], [], 0, None
    for token in tokens:
        if token.text in {"(", "[", "{"}:
            depth += 1
        elif token.text in {")", "]", "}"}:
            depth -= 1
        if depth == 0 and token.text in separators:
            parts.append((before, current))
            current, before = [], token.text
        else:
            current.append(token)
    parts.append((before, current))
    return parts


@dataclass
class Clause:
    sides: list            # readers' value functions
    update: bool           # ``lhs \leftarrow rhs``
    conditions: list       # (lhs, rhs) value functions: substitutions
    free: list             # free index letters, sorted
    text: str


def clauses(block: str) -> list[Clause]:
    out = []
    for piece in re.split(r"\\qquad", block):
        piece = piece.strip().rstrip(",").strip()
        conditions = []
        if ":\\quad" in piece:
            head, piece = piece.split(":\\quad", 1)
            for _, part in _split_top(tokenize(head), {","}):
                pair = _split_top(part, {"="})
                if len(pair) == 2:           # a label such as \gamma_{chw} is not a condition
                    lhs, rhs = Reader(pair[0][1]), Reader(pair[1][1])
                    conditions.append((lhs.expression(), rhs.expression()))
        parts = _split_top(tokenize(piece), {"=", r"\leftarrow"})
        update = any(sep == r"\leftarrow" for sep, _ in parts)
        sides, free = [], set()
        for n, (_, tokens) in enumerate(parts):
            reader = Reader(tokens, after_update=update and n == 0)
            sides.append(reader.expression())
            reader.done()
            free |= reader.free
        if len(sides) < 2:
            raise ValueError(f"no '=' in {piece!r}")
        out.append(Clause(sides, update, conditions, sorted(free), piece))
    return out


def _assert_equal(a, b, what: str, zero: Callable):
    if _is_matrix(a) or _is_matrix(b):
        if not (_is_matrix(a) and _is_matrix(b)) or a.shape != b.shape:
            raise AssertionError(f"{what}: the sides differ in shape")
        for u, v in zip(a, b):
            _assert_equal(u, v, what, zero)
        return
    if not zero(a - b):
        raise AssertionError(f"{what}: the sides are not equal")


def check_block(block: str, reading: Reading, zero: Callable) -> None:
    """Every clause of ``block`` holds in ``reading``, for every value of its free indices.

    ``zero(expr)`` decides whether a difference is identically zero (a batch's ``reduce``).
    """
    for clause in clauses(block):
        for values in itertools.product(range(1, reading.size + 1), repeat=len(clause.free)):
            reading.index = dict(zip(clause.free, values))
            subs = {lhs(reading): rhs(reading) for lhs, rhs in clause.conditions}
            sides = [side(reading) for side in clause.sides]
            if subs:
                sides = [s.xreplace(subs) for s in sides]
            for a, b in zip(sides, sides[1:]):
                _assert_equal(a, b, f"{clause.text!r} at {reading.index}", zero)
