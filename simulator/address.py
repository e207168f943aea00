"""``HOST:PORT``: where a simulated terminal dials its gateway, as given on the command line."""


class AddressError(ValueError):
    """Not a HOST:PORT; the message says what was given."""


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)
