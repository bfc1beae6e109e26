"""`JobSignals`: a job's moves wake the requests waiting on its model, and only those."""

from __future__ import annotations

import asyncio
import threading
import time

from veil.server.jobs.signals import JobSignals


def test_a_move_noted_before_waiting_is_not_lost() -> None:
    signals = JobSignals()
    seen = signals.count("m")
    signals.notify("m")  # between the reader's note and its wait
    asyncio.run(asyncio.wait_for(signals.changed("m", since=seen, timeout=60), 5))
    assert signals._waiters == {}


def test_a_waiter_wakes_when_another_thread_notifies_its_model() -> None:
    signals = JobSignals()
    other_woke = []

    def job() -> None:
        while "m" not in signals._waiters:  # both readers wait now
            time.sleep(0.001)
        signals.notify("other")
        signals.notify("m")

    async def readers() -> None:
        other = asyncio.create_task(signals.changed("other", since=0, timeout=60))
        other.add_done_callback(lambda _: other_woke.append(True))
        await asyncio.sleep(0)
        await asyncio.wait_for(signals.changed("m", since=0, timeout=60), 10)
        await asyncio.wait_for(other, 10)

    thread = threading.Thread(target=job)
    thread.start()
    asyncio.run(readers())
    thread.join()
    assert signals.count("m") == 1 and other_woke == [True]
    assert signals._waiters == {}


def test_a_wait_ends_at_its_timeout_and_leaves_no_waiter() -> None:
    signals = JobSignals()
    asyncio.run(signals.changed("m", since=0, timeout=0.01))
    assert signals._waiters == {} and signals.count("m") == 0


def test_a_waiter_whose_loop_closed_does_not_break_notify() -> None:
    signals = JobSignals()
    loop = asyncio.new_event_loop()
    task = loop.create_task(signals.changed("m", since=0, timeout=60))
    loop.run_until_complete(asyncio.sleep(0))  # the waiter is registered
    assert "m" in signals._waiters
    loop.close()  # with the waiter still registered
    signals.notify("m")
    assert signals.count("m") == 1 and signals._waiters == {}
    del task
