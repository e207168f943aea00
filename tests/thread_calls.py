"""A reactor as a worker thread sees it, for tests of code that hands results back from threads."""

import queue
import time


class ThreadCalls:
    """A reactor as the writer thread sees it: results handed over, delivered when the test asks."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self.calls.put((f, args, kwargs))

    def run_until(self, predicate, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                f, args, kwargs = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None
            f(*args, **kwargs)
