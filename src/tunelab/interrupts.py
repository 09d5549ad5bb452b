"""Stopping on SIGTERM / SIGINT within seconds, in every phase of a long command.

Schedulers (SLURM, Kubernetes, ``timeout``) send SIGTERM and follow with SIGKILL 30-60 s later, so a stop request
cannot wait for the end of an evaluation or an export. The handler raises :class:`StopSignal` at once, wherever the
main thread is (data check, evaluation, generation, saving): the exception unwinds through every ``finally`` and
context manager, so temporary files are removed and atomic writes stay whole. Only inside a training step (the
``deferred()`` block) is the request held until the step is over, because a half-applied optimizer step cannot be
saved; a second signal there stops at once, without a checkpoint.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal(BaseException):
    """A stop asked for by a signal.

    A ``BaseException`` like ``KeyboardInterrupt``: an ``except Exception`` in tunelab or in a library must not
    swallow it and carry on.
    """

    run_status = "stopped"

    def __init__(self, signum: int, mid_step: bool = False):
        self.signum = int(signum)
        self.mid_step = mid_step  # raised inside a training step: the weights may be half-updated
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopOnSignal:
    """Context manager: SIGINT and SIGTERM raise :class:`StopSignal` (held until the end of a ``deferred()``
    block). Outside the main thread, where handlers cannot be installed, signals keep their old behaviour."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received inside a deferred block
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring and self.requested is None:
            self.requested = signum
            return
        raise StopSignal(signum, mid_step=self._deferring)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a signal may not cut in two: a stop asked for inside it is raised when it ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.requested is not None:
            signum, self.requested = self.requested, None
            raise StopSignal(signum)

    def __enter__(self) -> StopOnSignal:
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
