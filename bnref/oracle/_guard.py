"""Calling a candidate: each call time-limited, its stdout sent to stderr, its return value checked.

A candidate is someone else's code: it may raise anything (``SystemExit`` included), return
something that is not an array of the promised shape and dtype, print, or never return.
:class:`Guard` turns each of these into a :class:`CandidateError` naming the call, so that
it becomes a finding on the property that made the call and the run goes on.

Time limits, by where the call runs:

* in the main thread on POSIX, ``SIGALRM`` raises :class:`CallTimeout` inside the candidate
  after ``timeout`` seconds: this stops Python loops, ``time.sleep`` and any C code that
  returns to the interpreter or is interrupted by signals;
* elsewhere (another thread, Windows) the call runs in a daemon thread that is abandoned
  after ``timeout`` seconds (an asynchronous :class:`CallTimeout` stops it at its next
  Python bytecode; until then it runs on, and a call still blocked in one long C call can
  disturb later Hypothesis runs in the same process, so run checks from the main thread,
  as ``bnref check`` and the pytest plugin do);
* a call that does not return ``2 timeout + 5`` seconds after it started is stuck in C code
  that releases the GIL: a watchdog thread calls ``on_hang`` (which prints the partial
  report) and ends the process with status 1;
* C code that holds the GIL forever stops every thread, the watchdog too: Python's
  :mod:`faulthandler` then prints where each thread is and ends the process with status 1,
  ``3 timeout + 30`` seconds after the watchdog last ran.

A method that timed out once is not called again in the same run.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import faulthandler
import numbers
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["CandidateError", "CallTimedOut", "Guard", "DEFAULT_TIMEOUT", "RETURNS", "check_returns"]

#: seconds a single candidate call may take (``bnref check --timeout``)
DEFAULT_TIMEOUT = 60.0
#: how often the watchdog looks at the call in flight
WATCHDOG_TICK = 0.25


class CandidateError(Exception):
    """The candidate raised (or returned something unusable) where it should have returned a result."""


class CallTimedOut(CandidateError):
    """A candidate call exceeded its time limit (or its method timed out earlier in the run)."""


class CallTimeout(BaseException):
    """Raised inside a candidate's call at its time limit.

    A ``BaseException``, so that a candidate's ``except Exception`` does not swallow it.
    """


@dataclass(frozen=True)
class Output:
    """One returned array, shaped like argument ``like`` (per shard when ``per_shard``).

    Its dtype is x's, or for an output of the parameters (``param``: the name of the
    argument it mirrors) that argument's: float32 for a half-precision candidate with
    ``param_dtype = "float32"``, which the oracle calls with float32 parameters.
    """

    name: str
    like: int
    per_shard: bool = False
    param: str | None = None


#: what each protocol method returns: a bare array (one Output) or a tuple (several)
RETURNS: dict[str, tuple[Output, ...]] = {
    "forward_train": (Output("y", 0),),
    "forward_eval": (Output("y", 0),),
    "backward": (Output("dx", 0), Output("dgamma", 1, param="gamma"), Output("dbeta", 1, param="gamma")),
    "update_running": (Output("running_mean", 1, param="running_mean"),
                       Output("running_var", 2, param="running_var")),
    "update_running_steps": (Output("running_mean", 1, param="running_mean"),
                             Output("running_var", 2, param="running_var")),
    "double_backward": (Output("gx", 0), Output("ggamma", 1, param="gamma"), Output("gdy", 4)),
    "forward_train_sharded": (Output("ys", 0, per_shard=True),),
    "backward_sharded": (Output("dxs", 0, per_shard=True), Output("dgamma", 1, param="gamma"),
                         Output("dbeta", 1, param="gamma")),
}


def _text(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``__str__`` raises."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001  (a candidate's broken exception class)
        message = "<unprintable>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _what(value) -> str:
    """A short description of a returned value that calls none of its methods."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (numbers.Number, np.generic)):
        return f"a scalar {type(value).__name__}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _array(method: str, name: str, value, shape: tuple, dtype: np.dtype, whose: str = "x") -> np.ndarray:
    expected = f"expected an array of shape {shape} and dtype {dtype}"
    if value is None or isinstance(value, (numbers.Number, np.generic, tuple, list, str, bytes, dict)):
        raise CandidateError(f"{method} returned {name} as {_what(value)}; {expected}")
    try:
        array = np.asarray(value)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  (e.g. a framework tensor whose __array__ raises)
        raise CandidateError(f"{method} returned {name} as {_what(value)}, which np.asarray cannot convert "
                             f"({_text(exc)}); {expected}") from None
    if array.shape != shape:
        raise CandidateError(f"{method} returned {name} of shape {array.shape}; {expected}")
    if array.dtype != dtype:
        raise CandidateError(f"{method} returned {name} of dtype {array.dtype}; {expected} (the dtype of {whose})")
    return array


def check_returns(method: str, value, args: tuple):
    """``value`` as NumPy arrays if it is what ``method`` promises (:data:`RETURNS`), else CandidateError.

    Each shape is that of the argument the output mirrors; the dtype is x's (the first
    argument's), or for a parameter output that of the parameter it mirrors. A single output
    is a bare array; several are a tuple (or list) of that length; a per-shard output is a
    list with one array per shard.
    """
    outputs = RETURNS[method]
    first = args[0][0] if outputs[0].per_shard else args[0]
    dtype = np.asarray(first).dtype

    def one(output: Output, v):
        if output.param:
            like = np.asarray(args[output.like])
            return _array(method, output.name, v, like.shape, like.dtype, whose=output.param)
        if not output.per_shard:
            return _array(method, output.name, v, np.shape(args[output.like]), dtype)
        shards = args[output.like]
        if not isinstance(v, (tuple, list)) or len(v) != len(shards):
            raise CandidateError(f"{method} returned {output.name} as {_what(v)}; expected a list of "
                                 f"{len(shards)} arrays, one per shard")
        return [_array(method, f"{output.name}[{i}]", p, np.shape(s), dtype) for i, (p, s) in enumerate(zip(v, shards))]

    if len(outputs) == 1:
        return one(outputs[0], value)
    if not isinstance(value, (tuple, list)) or len(value) != len(outputs):
        names = ", ".join(o.name for o in outputs)
        raise CandidateError(f"{method} returned {_what(value)}; expected a tuple of {len(outputs)} ({names})")
    return tuple(one(o, v) for o, v in zip(outputs, value))


def _raise_timeout(signum, frame):
    raise CallTimeout


def _alarm_available() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _stop_thread(thread: threading.Thread) -> None:
    """Raise CallTimeout in ``thread`` at its next bytecode (it may be in C code and never see it)."""
    with contextlib.suppress(Exception):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(CallTimeout))


class Guard:
    """Calls candidate methods for one oracle run (see the module docstring).

    Args:
        timeout: seconds per call; ``None`` or ``0``: no limit.
        on_hang: called with the name of a method stuck outside the interpreter, just before
            the process ends (prints the partial report).
    """

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT, on_hang=None):
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None; got {timeout!r}")
        self.timeout = float(timeout) if timeout else None
        self.on_hang = on_hang
        self.timed_out: set[str] = set()
        self._lock = threading.Lock()
        self._in_flight: tuple[str, float] | None = None   # (method, when it must have returned)
        self._idle_since = time.monotonic()
        self._watchdog: threading.Thread | None = None

    # ----------------------------------------------------------------- the call

    def call(self, candidate, method: str, *args, check: bool = True):
        """``candidate.method(*args)``, its result checked against :data:`RETURNS` (``check``).

        Raises:
            CallTimedOut: the call exceeded the limit, or ``method`` timed out earlier in this run.
            CandidateError: the candidate raised (anything but KeyboardInterrupt) or returned
                something other than the promised arrays.
        """
        if method in self.timed_out:
            raise CallTimedOut(f"{method} timed out after {self.timeout:g} s on an earlier call; not called again")

        def run():
            value = getattr(candidate, method)(*args)
            return check_returns(method, value, args) if check and method in RETURNS else value

        try:
            with contextlib.redirect_stdout(sys.stderr):  # the report (or JSON) owns stdout
                if self.timeout is None:
                    return run()
                if _alarm_available():
                    return self._with_alarm(method, run)
                return self._in_thread(method, run)
        except (CandidateError, KeyboardInterrupt):
            raise
        except CallTimeout:
            self.timed_out.add(method)
            raise CallTimedOut(f"{method} timed out after {self.timeout:g} s") from None
        except BaseException as exc:  # noqa: BLE001  (SystemExit too: the candidate's failure is the finding)
            raise CandidateError(f"{method} raised {_text(exc)}") from exc

    def _with_alarm(self, method: str, run):
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        outer, _ = signal.setitimer(signal.ITIMER_REAL, self.timeout)
        start = time.monotonic()
        self._begin(method, start)
        try:
            return run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self._end()
            if outer > 0:  # someone else's alarm (pytest-timeout's, say) was pending: give it back
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))

    def _in_thread(self, method: str, run):
        box: dict = {}

        def target():
            try:
                box["value"] = run()
            except BaseException as exc:  # noqa: BLE001  (handed to the calling thread)
                box["error"] = exc

        thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True,
                                  name=f"bnref check: {method}")
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            _stop_thread(thread)
            raise CallTimeout
        if "error" in box:
            raise box["error"]
        return box["value"]

    # ----------------------------------------------------------------- the watchdog

    def _begin(self, method: str, start: float) -> None:
        with self._lock:
            self._in_flight = (method, start + 2 * self.timeout + 5)
            if self._watchdog is None:
                self._arm_faulthandler()  # before the thread starts: this call may never release the GIL
                self._watchdog = threading.Thread(target=self._watch, daemon=True, name="bnref check watchdog")
                self._watchdog.start()

    def _end(self) -> None:
        with self._lock:
            self._in_flight = None
            self._idle_since = time.monotonic()

    def _arm_faulthandler(self) -> None:
        with contextlib.suppress(Exception):  # no usable stderr descriptor: the soft limits still hold
            faulthandler.dump_traceback_later(3 * self.timeout + 30, exit=True, file=2)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK)
            with self._lock:
                flight = self._in_flight
                if flight is None and time.monotonic() - self._idle_since > 4 * WATCHDOG_TICK:
                    faulthandler.cancel_dump_traceback_later()
                    self._watchdog = None
                    return
                self._arm_faulthandler()
            if flight is not None and time.monotonic() > flight[1]:
                self._hang(flight[0])

    def _hang(self, method: str) -> None:
        os.write(2, (f"\nbnref check: {method} has not returned {2 * self.timeout + 5:g} s after it started "
                     f"(limit {self.timeout:g} s) and cannot be interrupted (it is in C code); ending the "
                     f"run\n").encode())
        try:
            if self.on_hang is not None:
                self.on_hang(method)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(1)

    def close(self) -> None:
        """Stop the watchdog (and the faulthandler limit) once no call is in flight."""
        with self._lock:
            if self._watchdog is not None and self._in_flight is None:
                faulthandler.cancel_dump_traceback_later()
                self._idle_since = -1e9  # the watchdog exits on its next tick
