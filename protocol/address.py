"""``HOST:PORT``: how a peer is named on command lines and in configuration files, by every side
(the gateway dialling a terminal, a simulated terminal dialling its gateway, the tools)."""


class AddressError(ValueError):
    """Not a HOST:PORT; the message says what was given."""


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``, or of a bare ``HOST`` when there is a ``default_port``."""
    host, sep, port = str(text).rpartition(":")
    if not sep and default_port is not None:
        host, port = str(text), str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        expected = "HOST:PORT" if default_port is None else "HOST or HOST:PORT"
        raise AddressError(f"expected {expected}, got {text!r}")
    return host, int(port)
