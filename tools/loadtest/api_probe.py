"""ApiProbe: how long the gateway takes to answer a read request, idle and under load.

It times ``GET /api/terminals`` (the devices list, with online state and cursor lag: what a
monitoring page polls) from a thread, a few times a second, on a new connection each time.
"""

import http.client
import threading
import time

PATH = "/api/terminals"


class ApiProbe:
    interval_s = 0.2
    timeout_s = 10.0

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.loaded: list[tuple[float, float]] = []  # (wall time, ms)
        self.failures: list[str] = []  # requests under load that got no 200 answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def request_ms(self) -> float:
        """One timed request; raises ``ApiUnavailable`` unless the answer is 200."""
        started = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", PATH)
            answer = conn.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException) as exc:  # a garbled answer counts as a failure, too
            raise ApiUnavailable(f"GET {PATH}: {exc.strerror or exc}") from None
        finally:
            conn.close()
        if answer.status != 200:
            raise ApiUnavailable(f"GET {PATH} answered {answer.status} {answer.reason}")
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
        """Sample on a thread until ``stop``, into ``loaded``: at once, then every ``interval_s``.

        ``stop`` waits for the request in flight, so even the shortest or slowest run has a sample."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while True:
            try:
                self.loaded.append((time.time(), self.request_ms()))
            except ApiUnavailable as exc:
                self.failures.append(str(exc))
            if self._stop.wait(self.interval_s):
                return


class ApiUnavailable(RuntimeError):
    pass
