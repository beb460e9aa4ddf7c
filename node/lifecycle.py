"""Bounded shutdown: every stage of stopping a node has a time limit, and a hard deadline backs them.

A node must stop within seconds of SIGTERM or SIGINT whatever it is doing, so nothing on
the way out may wait on a peer, a client or a thread: each stage runs under ``bounded``
(log one line and move on when it overruns), and ``Deadline`` is a watchdog thread armed at
the first signal that ends the process with ``EXIT_HUNG`` if the orderly path has not
finished in time, or at once on a second signal. Worker threads that run torch are daemon
threads started by ``in_daemon_thread``: the default executor's threads are joined at
exit, so a long recomputation there would hold the process for minutes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger("stepchain.node")

EXIT_OK = 0
EXIT_FAILED = 1  # a part the node cannot run without (the consensus engine) died
EXIT_HUNG = 3  # the orderly shutdown overran its deadline, or a second signal cut it short
HARD_DEADLINE_S = 8.0

T = TypeVar("T")


class Deadline:
    """A watchdog for the way out: after `seconds`, log one line and `os._exit(EXIT_HUNG)`."""

    def __init__(self, seconds: float = HARD_DEADLINE_S, exit_fn: Callable[[int], None] = os._exit):
        self.seconds = seconds
        self._exit = exit_fn
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, why: str) -> None:
        """Start the clock (once); a second call, such as a second signal, exits now."""
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.seconds, self._fire, args=(f"shutdown ({why}) did not finish "
                                                                             f"within {self.seconds:.0f} s",))
                self._timer.daemon = True
                self._timer.start()
                return
        self._fire(f"{why} again while stopping")

    def disarm(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _fire(self, reason: str) -> None:
        log.error("%s: exiting now without a clean stop (exit code %d)", reason, EXIT_HUNG)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        self._exit(EXIT_HUNG)


async def bounded(what: str, awaitable: Awaitable[T], seconds: float) -> T | None:
    """Await with a time limit; an overrun or a failure is one log line, never a hang or a
    traceback, because the stages after this one must still run."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        log.warning("shutdown: %s did not finish within %.1f s; going on without it", what, seconds)
    except Exception as exc:  # noqa: BLE001 - a stage's failure must not stop the next stage
        log.warning("shutdown: %s failed: %s: %s", what, type(exc).__name__, exc)
    return None


def where(exc: BaseException) -> str:
    """`file:line in function` of the innermost frame of exc's traceback, for a one-line report."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    path = "/".join(code.co_filename.replace(os.sep, "/").split("/")[-2:])
    return f"{path}:{tb.tb_lineno} in {code.co_name}"


async def in_daemon_thread(fn: Callable[..., T], *args) -> T:
    """Run fn(*args) in a new daemon thread and await its result. Unlike asyncio.to_thread,
    nothing joins the thread at exit: a node that stops while it runs does not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the node stopped while we worked
            pass

    threading.Thread(target=work, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    return await future


def busy_threads() -> list[threading.Thread]:
    """Threads other than this one still running (daemon worker threads, stuck executor threads)."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and t.is_alive() and not isinstance(t, threading.Timer)]
