"""A dependency-free progress bar for long work (oracle runs, training, benchmarks).

Writes to stderr; redraws in place on a terminal and prints a line every
``every`` seconds otherwise (CI logs stay readable).
"""
from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "training") as bar: bar.update(1, loss=0.3)``.

    ``total`` may be None for an open-ended count. Extra keyword arguments to
    :meth:`update` are shown after the bar (floats with 4 significant digits).
    """

    def __init__(self, total: int | None, desc: str = "", *, unit: str = "it", stream=None,
                 every: float = 5.0, enabled: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if not self.tty else 0.1
        self.count = 0
        self.start = self._last = time.perf_counter()
        self.fields: dict[str, object] = {}

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **fields) -> None:
        self.count += n
        self.fields.update(fields)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.every or self.count == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.count / self.total)
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            eta = (self.total - self.count) / rate if rate > 0 else float("nan")
            head = f"{self.desc} [{bar}] {self.count}/{self.total} {rate:.1f} {self.unit}/s eta {eta:.0f}s"
        else:
            head = f"{self.desc} {self.count} {self.unit} {rate:.1f} {self.unit}/s"
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.fields.items())
        line = f"{head} {extra}".rstrip()
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else "\x1b[K"))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and (self.tty or self.count != self.total):
            self._draw(time.perf_counter(), final=True)
        self.enabled = False
