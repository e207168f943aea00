"""The comm key proof: what AUTH carries when a device has a communication password.

Devices answer CONNECT with ACK_UNAUTH and a session id; the client proves it knows the key
with four bytes derived from key, session id and a "ticks" byte it chooses (docs/zk.md section
"Comm key"). The key never crosses the wire, but the scrambling is no secret: anyone who sees
one exchange can recover it, so the key only keeps honest strangers out.
"""

MAX_COMM_KEY = 999_999  # what a device's menu accepts
SCRAMBLE = b"ZKSO"


def make_commkey(key: int, session_id: int, ticks: int = 50) -> bytes:
    """The AUTH data for ``key`` in session ``session_id``, as devices compute it.

    The key's 32 bits are reversed, the session id added (mod 2**32), the bytes XORed with
    ``ZKSO``, the two 16-bit halves swapped, and the result XORed with ``ticks``, whose low byte
    replaces the third byte so the device can redo the computation.
    """
    reversed_bits = int(f"{key & 0xFFFFFFFF:032b}"[::-1], 2)
    mixed = ((reversed_bits + session_id) & 0xFFFFFFFF).to_bytes(4, "little")
    scrambled = bytes(b ^ s for b, s in zip(mixed, SCRAMBLE))
    swapped = scrambled[2:4] + scrambled[0:2]
    tick = ticks & 0xFF
    return bytes((swapped[0] ^ tick, swapped[1] ^ tick, tick, swapped[3] ^ tick))


def commkey_matches(key: int, session_id: int, proof: bytes) -> bool:
    """Whether ``proof`` (AUTH data) was made from ``key`` for this session, whatever ticks it used."""
    return len(proof) == 4 and make_commkey(key, session_id, proof[2]) == proof
