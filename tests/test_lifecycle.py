"""node.lifecycle in-process: the hard deadline fires once its time is up (at once when armed a
second time, never once disarmed), a stage that overruns costs one log line and its time limit,
and work in a daemon thread hands back its result or its exception."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from node.lifecycle import EXIT_HUNG, Deadline, bounded, busy_threads, in_daemon_thread


class Exits:
    def __init__(self):
        self.codes: list[int] = []
        self.fired = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.fired.set()


def test_deadline_fires_after_its_time_with_one_line(caplog):
    exits = Exits()
    deadline = Deadline(0.3, exit_fn=exits)
    with caplog.at_level(logging.ERROR, "stepchain.node"):
        started = time.monotonic()
        deadline.arm("SIGTERM")
        assert exits.fired.wait(5)
    assert 0.25 < time.monotonic() - started < 3
    assert exits.codes == [EXIT_HUNG]
    assert [r.getMessage() for r in caplog.records] == [
        "shutdown (SIGTERM) did not finish within 0 s: exiting now without a clean stop (exit code 3)"]


def test_deadline_second_arm_exits_at_once_and_disarm_stops_it():
    exits = Exits()
    deadline = Deadline(60, exit_fn=exits)
    deadline.arm("SIGTERM")
    assert deadline.armed and not exits.codes
    deadline.arm("SIGINT")
    assert exits.codes == [EXIT_HUNG]

    quiet = Exits()
    deadline = Deadline(0.2, exit_fn=quiet)
    deadline.arm("SIGTERM")
    deadline.disarm()
    assert not quiet.fired.wait(0.6)


async def test_bounded_stage_overrun_is_one_line_and_its_time(caplog):
    with caplog.at_level(logging.WARNING, "stepchain.node"):
        started = time.monotonic()
        assert await bounded("a stuck stage", asyncio.sleep(60), 0.2) is None
        elapsed = time.monotonic() - started
        assert await bounded("a broken stage", _fail(), 1.0) is None
        assert await bounded("a good stage", _answer(), 1.0) == 42
    assert 0.15 < elapsed < 2
    assert [r.getMessage() for r in caplog.records] == [
        "shutdown: a stuck stage did not finish within 0.2 s; going on without it",
        "shutdown: a broken stage failed: OSError: disk on fire"]


async def _fail():
    raise OSError("disk on fire")


async def _answer():
    return 42


async def test_daemon_thread_result_exception_and_no_join():
    assert await in_daemon_thread(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await in_daemon_thread(lambda: 1 // 0)
    release = threading.Event()
    task = asyncio.ensure_future(in_daemon_thread(release.wait, 30))
    await asyncio.sleep(0.1)
    stuck = [t for t in busy_threads() if t.name == "wait"]
    assert stuck and all(t.daemon for t in stuck)  # nothing joins it at exit
    release.set()
    assert await task is True
