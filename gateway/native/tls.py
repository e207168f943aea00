"""TLS on terminal links: certificate and key files made into Twisted's TLS options, for the
listener terminals dial in to over TLS and for terminals the gateway dials out to.

TLS only carries the link; the handshake inside it (HELLO, WELCOME and their HMAC proofs) is
unchanged, so a terminal still proves its secret and a certificate never stands for one.
docs/tls.md says how to set it up.
"""

from pathlib import Path

from OpenSSL import crypto
from twisted.internet import ssl


class TlsSetupError(ValueError):
    """A certificate, key or CA file that cannot be read or does not fit; the message names it."""


def server_options(cert_file: str, key_file: str, client_ca_file: str | None = None):
    """Options for a listener: its certificate and key; with ``client_ca_file``, terminals must
    show a certificate that CA signed."""
    identity = _identity(cert_file, key_file)
    if client_ca_file is None:
        return identity.options()
    return identity.options(_authority(client_ca_file))


def client_options(hostname: str, ca_file: str, cert_file: str | None = None, key_file: str | None = None):
    """Options for dialling a terminal: its certificate must be signed by ``ca_file`` and name
    ``hostname``; ``cert_file`` and ``key_file`` are the gateway's own, for a terminal that asks."""
    identity = _identity(cert_file, key_file) if cert_file else None
    return ssl.optionsForClientTLS(hostname, trustRoot=_authority(ca_file), clientCertificate=identity)


def _identity(cert_file: str, key_file: str | None) -> ssl.PrivateCertificate:
    cert, key = _read(cert_file, "certificate"), _read(key_file, "key") if key_file else b""
    try:
        return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
    except (crypto.Error, ValueError) as exc:
        raise TlsSetupError(f"{cert_file} and {key_file}: not a PEM certificate and its private key ({_why(exc)})") from None


def _authority(ca_file: str) -> ssl.Certificate:
    try:
        return ssl.Certificate.loadPEM(_read(ca_file, "CA certificate"))
    except (crypto.Error, ValueError) as exc:
        raise TlsSetupError(f"{ca_file}: not a PEM certificate ({_why(exc)})") from None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
