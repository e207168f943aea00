"""TLS for a simulated terminal, as a real one would be set up: the CA it trusts, its own
certificate and key, all from PEM files, made into Twisted's TLS options.

Dialling in, the terminal checks the gateway's certificate against ``--tls-ca`` and the name it
dialled (or ``--tls-name``), and shows its own certificate if given one. Listening, it serves
its certificate and, with ``--tls-ca``, asks the gateway for one that CA signed. The protocol's
own handshake (HELLO, WELCOME, the HMAC proofs) runs inside, unchanged.
"""

from pathlib import Path

from twisted.internet import ssl


class TlsFileError(ValueError):
    """A certificate or key file that cannot be read or parsed; the message names it."""


def dialling_options(hostname: str, ca_file: str, cert_file: str | None = None, key_file: str | None = None):
    identity = _identity(cert_file, key_file) if cert_file else None
    return ssl.optionsForClientTLS(hostname, trustRoot=_authority(ca_file), clientCertificate=identity)


def listening_options(cert_file: str, key_file: str, ca_file: str | None = None):
    identity = _identity(cert_file, key_file)
    return identity.options(_authority(ca_file)) if ca_file else identity.options()


def _identity(cert_file: str, key_file: str | None) -> ssl.PrivateCertificate:
    pem = _read(cert_file) + b"\n" + (_read(key_file) if key_file else b"")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception as exc:  # pyOpenSSL raises its own Error, or ValueError, on a bad PEM
        raise TlsFileError(f"{cert_file} and {key_file}: not a PEM certificate and its key ({exc})") from None


def _authority(ca_file: str) -> ssl.Certificate:
    try:
        return ssl.Certificate.loadPEM(_read(ca_file))
    except Exception as exc:
        raise TlsFileError(f"{ca_file}: not a PEM certificate ({exc})") from None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {path}: {exc.strerror}") from None
