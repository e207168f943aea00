"""ApiProbe: how long the gateway takes to answer a read request, idle and under load.

It times ``GET /api/terminals`` (the devices list, with online state and cursor lag: what a
monitoring page polls), or another ``path``, a few times a second, on a new connection each time. Under load it
samples from a process of its own: a thread of the load test would wait for the load test's
interpreter lock while the load test's own reactor is busy, and that wait would be counted as
the gateway's.
"""

import http.client
import multiprocessing
import time

PATH = "/api/terminals"


class ApiProbe:
    interval_s = 0.2
    timeout_s = 10.0

    def __init__(self, port: int, host: str = "127.0.0.1", path: str = PATH):
        self.host, self.port, self.path = host, port, path
        self.loaded: list[tuple[float, float]] = []  # (wall time, ms)
        self.failures: list[str] = []  # requests under load that got no 200 answer
        self._sampler = None  # the child process sampling under load

    def request_ms(self) -> float:
        """One timed request; raises ``ApiUnavailable`` unless the answer is 200."""
        started = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", self.path)
            answer = conn.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException) as exc:  # a garbled answer counts as a failure, too
            raise ApiUnavailable(f"GET {self.path}: {exc.strerror or exc}") from None
        finally:
            conn.close()
        if answer.status != 200:
            raise ApiUnavailable(f"GET {self.path} answered {answer.status} {answer.reason}")
        return (time.perf_counter() - started) * 1000

    def unavailable_reason(self) -> str | None:
        try:
            self.request_ms()
        except ApiUnavailable as exc:
            return str(exc)
        return None

    def sample(self, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            samples.append(self.request_ms())
            time.sleep(self.interval_s / 4)
        return samples

    def start(self) -> None:
        """Sample in a child process until ``stop``, into ``loaded``: at once, then every ``interval_s``.

        ``stop`` waits for the request in flight, so even the shortest or slowest run has a sample."""
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._stop = spawn.Event()
        self._results, sender = spawn.Pipe(duplex=False)
        self._sampler = spawn.Process(target=_sample_until, daemon=True,
                                      args=(self.host, self.port, self.path, self.interval_s, self._stop, sender))
        self._sampler.start()

    def stop(self) -> None:
        if self._sampler is None:
            return
        self._stop.set()
        try:
            if not self._results.poll(self.timeout_s + 10):
                raise EOFError
            loaded, failures = self._results.recv()
            self.loaded += loaded
            self.failures += failures
        except EOFError:
            self.failures.append("the API probe's process ended without its samples")
        self._sampler.join(5)
        self._sampler = None


def _sample_until(host: str, port: int, path: str, interval_s: float, stop, results) -> None:
    """The child process: time requests until ``stop`` is set, then send ``(loaded, failures)``."""
    probe = ApiProbe(port, host, path)
    while True:
        try:
            probe.loaded.append((time.time(), probe.request_ms()))
        except ApiUnavailable as exc:
            probe.failures.append(str(exc))
        if stop.wait(interval_s):
            break
    results.send((probe.loaded, probe.failures))


class ApiUnavailable(RuntimeError):
    pass
