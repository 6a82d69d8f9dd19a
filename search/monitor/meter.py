"""Progress of a long command on stderr: tqdm's bar in a terminal, a plain line now and then elsewhere.

``eval``, ``estimate``, ``report`` and ``sync`` count their work through a :class:`Meter`. In a
terminal it is tqdm's bar (count, rate, ETA); when stderr is not a terminal or ``CI`` is set, a
plain line every :data:`PLAIN_PERIOD_S` seconds and one at the end, as the run console does, so a
CI log stays short; ``--quiet`` (:func:`configure`) silences it. stdout is never touched: tables
and JSON printed there read the same with or without it.

Code below the commands (the report's reader, the LOF sweep, the journal's sender) takes a meter
as a plain object with ``start``/``on``/``update``, so it needs no import from here. Ctrl-C inside
a meter closes it and keeps how far it got and what was written (:attr:`Meter.written`);
``lic-search`` then says so in one line and exits 130 (:func:`interrupted`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import ContextManager, Optional, TextIO

from tqdm import tqdm

PLAIN_PERIOD_S = 30.0  # not a terminal: one line this often (and one at the end)
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
_settings = {"quiet": False}
_stopped: dict[str, Optional[str]] = {"at": None}  # where a meter Ctrl-C ended stood, for interrupted()


def configure(quiet: bool) -> None:
    """``--quiet``: no progress at all (set by a command before its work starts)."""
    _settings["quiet"] = bool(quiet)


def interactive(stream: TextIO) -> bool:
    """Redraw in place only on a real terminal outside CI."""
    return stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


class Meter:
    """Items of work named ``what`` (``eval``), counted in ``unit`` (``image``); ``total`` now or at :meth:`start`."""

    def __init__(self, what: str, unit: str, total: Optional[int] = None, stream: Optional[TextIO] = None):
        self.what, self.unit = what, unit
        self.stream = stream or sys.stderr
        self.quiet = _settings["quiet"]
        #: What is on disk or in MLflow so far, said if Ctrl-C ends the meter ("{n}" is the count done).
        self.written = "nothing"
        self.total: Optional[int] = None
        self.n = 0
        self._on = ""  # what the items belong to now (a checkpoint, a rate point and trial)
        self._values = ""  # running means and the like
        self._started = self._last_line = time.monotonic()
        self._shown: Optional[int] = None  # the count of the last plain line
        self._bar: Optional[tqdm] = None
        if total is not None:
            self.start(total)

    def start(self, total: int) -> None:
        """The number of items, once known (the clock starts here)."""
        self.total, self.n = total, 0
        self._started = self._last_line = time.monotonic()
        if not self.quiet and interactive(self.stream):
            self._bar = tqdm(total=total, desc=self.what, unit=self.unit, file=self.stream, bar_format=BAR_FORMAT,
                             dynamic_ncols=True, leave=True)

    def on(self, text: str) -> None:
        """What the next items belong to (``λ=0.013, distortion=mse · trial 3f2a · lof50``), after the count."""
        if text != self._on:
            self._on = text
            self._show(refresh=True)

    def update(self, n: int = 1, **values: float) -> None:
        """``n`` more items done; ``values`` (running means, ...) are shown after the count."""
        self.n += n
        if values:
            self._values = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in values.items())
        if self._bar is not None:
            self._bar.update(n)
        self._show()

    def _detail(self) -> str:
        return " · ".join(part for part in (self._on, self._values) if part)

    def line(self) -> str:
        """The plain line: ``eval: 12/48 [01:05<03:15, 5.43s/image] · checkpoint_000004 · lof50 · mean bpp 0.51``."""
        detail = self._detail()
        return tqdm.format_meter(self.n, self.total, time.monotonic() - self._started, prefix=self.what,
                                 unit=self.unit, bar_format=PLAIN_FORMAT) + (f" · {detail}" if detail else "")

    def _show(self, refresh: bool = False, force: bool = False) -> None:
        if self.quiet or self.total is None:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self._detail(), refresh=refresh)
            return
        now = time.monotonic()
        if force or now - self._last_line >= PLAIN_PERIOD_S:
            self._last_line, self._shown = now, self.n
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def paused(self) -> ContextManager:
        """Around printing to stdout while the bar is up (the bar is cleared, then redrawn below)."""
        return tqdm.external_write_mode(file=sys.stdout) if self._bar is not None else contextlib.nullcontext()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._shown != self.n:
            self._show(force=True)

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close()
        if kind is KeyboardInterrupt:
            _stopped["at"] = (f"{self.what} at {self.n}/{'?' if self.total is None else self.total} "
                              f"{self.unit}s; written: {self.written.format(n=self.n)}")


def interrupted() -> str:
    """The line ``lic-search`` prints when Ctrl-C ends a command: where its meter stood, what was written."""
    at, _stopped["at"] = _stopped["at"], None
    return "lic-search: stopped by Ctrl-C" + (f" ({at})" if at else "")


__all__ = ["Meter", "configure", "interactive", "interrupted", "PLAIN_PERIOD_S"]
