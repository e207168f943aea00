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
