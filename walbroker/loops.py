"""Background loops that never die silently.

`run_loop` is the body of every client-side background thread (the producer's io and linger
loops, the consumer's io loop, the collector's writer): it logs the start and stop with
the loop's name, and turns any exception that escapes the loop into a `LoopCrashed`, logged
once (with its traceback) and handed to `on_crash`, which fails whatever waits on the loop.
The owner of the client sees the `LoopCrashed` from its next call and stops its process
with a non-zero exit: a client whose loop is dead cannot recover by itself (its state is
whatever the crash left), while a restarted process rejoins cleanly from committed offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LoopCrashed(RuntimeError):
    """A background loop stopped on an unexpected error; everything waiting on it gets this.

    Not a `BrokerError`: code that handles a refused batch or a broken stream must not take
    a dead client for one of those and carry on.
    """

    def __init__(self, loop: str, error: BaseException) -> None:
        super().__init__(f"background loop {loop!r} crashed: {type(error).__name__}: {error}")
        self.loop = loop
        self.error = error


def run_loop(
    name: str,
    body: Callable[[], None],
    on_crash: Callable[[LoopCrashed], None],
    **extra: Any,
) -> None:
    """Run `body` (a loop) on this thread; a crash is logged once and handed to `on_crash`."""
    fields = {"loop": name, **extra}
    log.info("loop started", extra=fields)
    try:
        body()
    except BaseException as exc:  # a loop must not die silently
        crash = LoopCrashed(name, exc)
        crash.__cause__ = exc
        log.exception("loop crashed", extra={**fields, "error": str(crash)})
        on_crash(crash)
    finally:
        log.info("loop stopped", extra=fields)
