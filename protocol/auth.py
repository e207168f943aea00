"""Challenge-response authentication: both sides prove they hold the terminal's secret.

The gateway sends a fresh nonce in HELLO; the terminal answers with its own nonce and
``terminal_proof``; the gateway checks it and answers WELCOME with ``gateway_proof``. Only
HMACs of nonces cross the wire, never the secret.
"""

import hashlib
import hmac
import os

from protocol.messages import NONCE_SIZE


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _mac(secret: bytes, role: bytes, terminal_id: int, gateway_nonce: bytes, terminal_nonce: bytes) -> bytes:
    msg = role + terminal_id.to_bytes(4, "big") + gateway_nonce + terminal_nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()


def terminal_proof(secret: bytes, terminal_id: int, gateway_nonce: bytes, terminal_nonce: bytes) -> bytes:
    return _mac(secret, b"terminal", terminal_id, gateway_nonce, terminal_nonce)


def gateway_proof(secret: bytes, terminal_id: int, gateway_nonce: bytes, terminal_nonce: bytes) -> bytes:
    return _mac(secret, b"gateway", terminal_id, gateway_nonce, terminal_nonce)


def proofs_match(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)


class GatewayHandshake:
    """The gateway's half of the handshake: HELLO out, the terminal's proof checked, WELCOME out."""

    def __init__(self, nonce: bytes | None = None):
        self.gateway_nonce = nonce or new_nonce()

    def hello(self, protocol_version: int) -> dict:
        return dict(gateway_nonce=self.gateway_nonce, protocol_version=protocol_version)

    def terminal_proved(self, secret: bytes, terminal_id: int, answer) -> bool:
        """Whether HELLO's ``answer`` proves the terminal holds ``secret``."""
        expected = terminal_proof(secret, terminal_id, self.gateway_nonce, answer.terminal_nonce)
        return proofs_match(expected, answer.proof)

    def welcome(self, secret: bytes, terminal_id: int, answer, *, server_time_ms: int, keepalive_s: int,
                ack_through: int) -> dict:
        proof = gateway_proof(secret, terminal_id, self.gateway_nonce, answer.terminal_nonce)
        return dict(proof=proof, server_time_ms=server_time_ms, keepalive_s=keepalive_s, ack_through=ack_through)


class TerminalHandshake:
    """The terminal's half: HELLO answered with a proof, the gateway's proof in WELCOME checked."""

    def __init__(self, terminal_id: int, secret: bytes):
        self.terminal_id = terminal_id
        self.secret = secret
        self.gateway_nonce = self.terminal_nonce = b""

    def answer_hello(self, hello) -> dict:
        """The proof part of HELLO's answer (``terminal_nonce`` and ``proof``); a new HELLO starts over."""
        self.gateway_nonce, self.terminal_nonce = hello.gateway_nonce, new_nonce()
        proof = terminal_proof(self.secret, self.terminal_id, self.gateway_nonce, self.terminal_nonce)
        return dict(terminal_nonce=self.terminal_nonce, proof=proof)

    def gateway_proved(self, welcome) -> bool:
        if not self.terminal_nonce:
            return False  # WELCOME before any HELLO proves nothing
        expected = gateway_proof(self.secret, self.terminal_id, self.gateway_nonce, self.terminal_nonce)
        return proofs_match(expected, welcome.proof)
