"""Run the properties against a candidate with Hypothesis and collect a :class:`Report`.

Each (property, dtype) pair is one Hypothesis run over
:func:`bnref.strategies.bn_cases` in the candidate's layout; a failure is shrunk
and the minimal example kept with its replay. The fingerprint is measured first,
since the running-statistics property checks the candidate in its own convention.
"""
from __future__ import annotations

import importlib
import math
import os
import shlex
import sys
import time

import numpy as np

import bnref
from bnref.oracle._guard import DEFAULT_TIMEOUT, CallTimedOut, Guard
from bnref.oracle.fingerprint import fingerprint as measure_fingerprint
from bnref.oracle.properties import PROPERTIES, CandidateError, Context, Outcome, property_named
from bnref.oracle.protocol import environment_of, provides, ranks_of, validate, version_of
from bnref.oracle.report import FAIL, NOT_PROVIDED, NOT_RUN, PASS, PropertyResult, Report
from bnref.profiles import ALIASES, DEFAULT, profile_named
from bnref.profiles import PROFILES as _TABLE

__all__ = ["check", "run_property", "load_target", "replay", "PROFILES", "TargetError", "CheckInterrupted",
           "DEFAULT_TIMEOUT"]

#: profile -> examples per (property, dtype): the ``max_examples`` of :data:`bnref.profiles.PROFILES`
PROFILES = {name: profile_named(name).max_examples for name in (*_TABLE, *ALIASES)}
#: small arrays keep one example in the milliseconds; rank, layout and conditioning carry the difficulty
CASE_LIMITS = dict(max_side=5, max_channels=4, max_size=512)


class TargetError(Exception):
    """The target names no adapter or cannot be imported / instantiated (CLI exit code 2)."""


class CheckInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`check`; ``report`` holds what ran, the rest marked "not run"."""

    def __init__(self, report: Report):
        super().__init__("bnref check interrupted")
        self.report = report


def _import_target_module(module_name: str):
    """Import ``module_name`` with the current directory first on sys.path, as ``python -m`` has it.

    The ``bnref`` console script's sys.path starts with its own directory, not the current one.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(module_name)


def load_target(target):
    """A candidate from an adapter name, ``"module:attr"`` (an instance, or a class/factory), or an object.

    ``module`` is looked up with the current directory first on ``sys.path`` (which this adds).

    Raises:
        TargetError: no such adapter, module or attribute; the import, the factory or the
            candidate's attributes raised; the object is not a candidate.
    """
    if not isinstance(target, str):
        return target
    from bnref.adapters import ADAPTERS, create

    if target in ADAPTERS:
        try:
            return create(target)
        except ImportError as exc:
            raise TargetError(f"adapter {target!r} needs its framework: {exc} "
                              f"(pip install 'bnref[{target.split('-')[0]}]')") from exc
    if ":" not in target:
        raise TargetError(f"unknown target {target!r}: not an adapter ({', '.join(ADAPTERS)}) "
                          f"and not of the form module:attr")
    module_name, _, attr = target.partition(":")
    try:
        module = _import_target_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  (an import may raise anything, SystemExit included)
        raise TargetError(f"cannot import {module_name!r} for target {target!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, type) or not hasattr(obj, "forward_train"):
        try:
            obj = obj()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise TargetError(f"{target} is neither a candidate nor a factory taking no arguments: "
                              f"{type(exc).__name__}: {exc}") from exc
    try:
        validate(obj)
    except KeyboardInterrupt:
        raise
    except (TypeError, ValueError) as exc:
        raise TargetError(str(exc)) from exc
    except BaseException as exc:  # noqa: BLE001  (a candidate attribute that raises)
        raise TargetError(f"{target}: reading the candidate's attributes raised {type(exc).__name__}: {exc}") from exc
    return obj


def _settings(max_examples: int):
    from hypothesis import HealthCheck, Phase, settings

    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                    phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                    print_blob=False, report_multiple_bugs=False)


def _strategy(candidate, prop, dtype):
    from bnref.strategies import bn_cases

    ranks = ranks_of(candidate)
    strategy = bn_cases(dtypes=(dtype,), channel_axes=(candidate.channel_axis,), conditions=prop.conditions,
                        min_rank=min(ranks), max_rank=max(ranks), **CASE_LIMITS)
    if set(ranks) != set(range(min(ranks), max(ranks) + 1)):
        strategy = strategy.filter(lambda case: case.x.ndim in ranks)
    return strategy


class _Failed(Exception):
    pass


class _Stopped(BaseException):
    """A call timed out: Hypothesis lets a BaseException through at once, without shrinking
    (each shrinking step would wait for the limit again)."""


#: Outcome.quantity of a call that exceeded its time limit
TIMEOUT = "timeout"


def _evaluate(prop, ctx: Context, case) -> list[Outcome]:
    try:
        with np.errstate(all="ignore"):  # a candidate's NaNs are findings, reported by the comparison
            return prop.body(ctx, ctx.as_used(case))
    except CallTimedOut as exc:
        return [Outcome(TIMEOUT, False, math.inf, str(exc))]
    except CandidateError as exc:
        return [Outcome("call", False, math.inf, str(exc))]


def _target_of(candidate) -> str:
    """``module:Class`` for an instance of an importable class (what the replay needs), else its name."""
    cls = type(candidate)
    if "<" not in cls.__qualname__ and cls.__module__ not in ("__main__", "builtins"):
        return f"{cls.__module__}:{cls.__qualname__}"
    return getattr(candidate, "name", "candidate")


def _replay_code(target: str, prop: str, case, environment: dict | None = None) -> str:
    """A shell line that replays ``case``, prefixed with the environment the candidate declares."""
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (environment or {}).items())
    return (f"{prefix}python -c \"import bnref.oracle as o, bnref.strategies; "
            f"o.replay({target!r}, {prop!r}, {case.replay()})\"")


def run_property(candidate, prop, dtype: str, *, ctx: Context | None = None, max_examples: int = 30,
                 seed: int = 0, target: str | None = None) -> PropertyResult:
    """Check one property in one dtype; a failure is shrunk to a minimal example.

    A call that exceeds the time limit of ``ctx.guard`` fails the property on that example,
    without shrinking.
    """
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import HypothesisException

    prop = property_named(prop) if isinstance(prop, str) else prop
    result = PropertyResult(prop.name, dtype, PASS, summary=prop.summary)
    if not all(provides(candidate, m) for m in prop.requires):
        result.status = NOT_PROVIDED
        return result
    ctx = ctx if ctx is not None else Context(candidate, measure_fingerprint(candidate))
    state = {"failing": None}
    start = time.perf_counter()

    def body(case):
        result.examples += 1
        outcomes = _evaluate(prop, ctx, case)
        for o in outcomes:
            if o.ratio > result.worst_ratio or not result.worst:
                result.worst_ratio, result.worst = o.ratio, o.text
        bad = [o for o in outcomes if not o.ok]
        if bad:
            state["failing"] = (case, bad)  # Hypothesis replays the minimal example last
            raise _Stopped if any(o.quantity == TIMEOUT for o in bad) else _Failed

    test = hypothesis_seed(seed)(_settings(max_examples)(given(_strategy(candidate, prop, dtype))(body)))
    try:
        test()
    except (_Failed, _Stopped):
        pass
    except HypothesisException as exc:  # e.g. a failure that does not reproduce (a nondeterministic candidate)
        result.status = FAIL
        result.failures = [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    result.seconds = time.perf_counter() - start
    if state["failing"] is not None:
        case, bad = state["failing"]
        result.status = FAIL
        result.failures = [o.text for o in bad]
        result.worst_ratio = max(o.ratio for o in bad)
        result.case = case.describe()
        result.replay = _replay_code(target or _target_of(candidate), prop.name, case, environment_of(candidate))
    return result


def check(candidate, dtypes=None, profile: str = DEFAULT, seed: int = 0, *, properties=None,
          progress: bool = False, target: str | None = None, timeout: float | None = DEFAULT_TIMEOUT,
          on_hang=None) -> Report:
    """Check ``candidate`` against bnref and return the :class:`Report`.

    Whatever the candidate does -- raise (SystemExit included), return something other than
    the promised arrays, print, or not return -- is a finding on the property that called
    it; the other properties still run.

    Args:
        candidate: an object following :class:`bnref.oracle.Candidate`, or a target string
            (adapter name or ``module:attr``).
        dtypes: the dtypes to check (default: all the candidate supports).
        profile: a name of :data:`bnref.profiles.PROFILES` (examples per property: its ``max_examples``).
        seed: Hypothesis seed; the same seed gives the same cases.
        properties: names of the properties to run (default: all).
        progress: draw a progress bar on stderr.
        timeout: seconds a single candidate call may take (None or 0: no limit). A call past it
            fails its property and its method is not called again. A call stuck in C code that
            cannot be interrupted ends the process with status 1 after ``2 timeout + 5`` s, once
            ``on_hang`` has been given the partial report (default: printed to stderr); see
            :mod:`bnref.oracle._guard`.
        on_hang: ``on_hang(report)``, called with the partial report before such an exit.

    Raises:
        TargetError: ``candidate`` is a target string that cannot be loaded.
        ValueError: an unknown profile or property, or a dtype the candidate does not support.
        CheckInterrupted: Ctrl-C; its ``report`` holds the results so far, the rest "not run".
    """
    from bnref._progress import Progress

    target = target or (candidate if isinstance(candidate, str) else _target_of(candidate))
    candidate = load_target(candidate)
    validate(candidate)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    supported = tuple(candidate.dtypes)
    dtypes = list(supported if dtypes is None else dtypes)
    unsupported = [d for d in dtypes if d not in supported]
    if unsupported:
        raise ValueError(f"{candidate.name} does not support {', '.join(unsupported)} "
                         f"(it declares {', '.join(supported)})")
    try:
        props = PROPERTIES if properties is None else tuple(property_named(p) for p in properties)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    start = time.perf_counter()
    report = Report(target=target, candidate=candidate.name, version=version_of(candidate),
                    channel_axis=candidate.channel_axis, dtypes=dtypes, profile=profile, seed=seed,
                    fingerprint=None, bnref_version=bnref.__version__)
    planned = [(prop, dtype) for dtype in dtypes for prop in props]
    current = {"item": None}

    def partial(reason: str, running: str) -> Report:
        """The report so far: the item in progress marked ``running``, every later one "not run"."""
        done = len(report.results)
        report.stopped = reason
        report.seconds = time.perf_counter() - start
        for i, (prop, dtype) in enumerate(planned[done:]):
            status, failures = (FAIL, [running]) if i == 0 and current["item"] is not None and running else (
                NOT_RUN, [])
            report.results.append(PropertyResult(prop.name, dtype, status, summary=prop.summary, failures=failures))
        return report

    def hang(method: str) -> None:
        where = "the fingerprint" if current["item"] is None else "this property"
        partial(f"{method} did not return and could not be interrupted; the run was ended",
                f"{method} did not return (stuck in C code) during {where}")
        (on_hang or (lambda r: print(r.render(), file=sys.stderr)))(report)

    guard = Guard(timeout, on_hang=hang)
    try:
        report.fingerprint = measure_fingerprint(candidate, "float64" if "float64" in dtypes else dtypes[0],
                                                 guard=guard)
        ctx = Context(candidate, report.fingerprint, guard)
        with Progress(len(planned), f"bnref check {target}", unit="prop", enabled=progress, every=2.0) as bar:
            for prop, dtype in planned:
                current["item"] = (prop, dtype)
                report.results.append(run_property(candidate, prop, dtype, ctx=ctx,
                                                   max_examples=PROFILES[profile], seed=seed, target=target))
                current["item"] = None
                bar.update(1, failed=len(report.failed), last=f"{prop.name}[{dtype}]")
    except KeyboardInterrupt:
        current["item"] = None
        raise CheckInterrupted(partial("interrupted (Ctrl-C)", "")) from None
    finally:
        guard.close()
    report.seconds = time.perf_counter() - start
    return report


def replay(target, prop: str, case, *, timeout: float | None = DEFAULT_TIMEOUT) -> list[Outcome]:
    """Run one property on one case (a failing report's minimal example) and print what it compares."""
    candidate = load_target(target)
    guard = Guard(timeout)
    try:
        ctx = Context(candidate, measure_fingerprint(candidate, guard=guard), guard)
        outcomes = _evaluate(property_named(prop), ctx, case)
    finally:
        guard.close()
    print(case.describe())
    for o in outcomes:
        print(("ok   " if o.ok else "FAIL ") + o.text)
    return outcomes
