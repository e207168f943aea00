"""benchmarks/thread_cpu.py (unit): a thread's CPU is read from /proc, and a thread that waits uses none."""

import os
import threading
import time

from benchmarks.thread_cpu import thread_ticks, used


def test_a_busy_thread_counts_and_one_waiting_does_not():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    waiter = threading.Thread(target=stop.wait)
    spinner = threading.Thread(target=spin)
    waiter.start()
    spinner.start()
    try:
        # Until the spinner shows 5 ticks of 10 ms: a loaded machine lends it the CPU later, not never.
        before, deadline = thread_ticks(os.getpid()), time.monotonic() + 30
        spent = {}
        while spent.get(spinner.native_id, 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
            spent = used(before, thread_ticks(os.getpid()))
    finally:
        stop.set()
        spinner.join()
        waiter.join()
    assert spent.get(spinner.native_id, 0) >= 5
    assert spent.get(waiter.native_id, 0) == 0


def test_a_thread_born_during_the_window_counts_from_nothing():
    assert used({1: 5}, {1: 7, 2: 3}) == {1: 2, 2: 3}
