"""What an identifier or a name may hold: one rule at every way in (the API, terminals' user
records, ZK and PUSH uploads), so that what a person is shown is what is stored.

A user id or a name is shown on the page, printed by the CLI, written to the log and sent to
terminals. A control character (C0, DEL, C1) there is a terminal escape sequence or a forged
log line; a bidirectional control (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069) reorders
what is shown ("doe\u202eexe.txt"); and one letter spelled two ways (é composed, or e and a
combining accent) makes two users that look alike. So the text holds none of these characters
and is in Unicode normalization form NFC. Nothing is changed silently: text that breaks the
rule is refused, and the refusal says why.
"""

import re
import unicodedata

_FORBIDDEN_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x061C, 0x061C), (0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069))
# The same characters as a regular-expression class, for JSON Schema patterns (ECMA 262 reads \uXXXX too).
FORBIDDEN_CLASS = "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in _FORBIDDEN_RANGES)
_FORBIDDEN = re.compile(f"[{FORBIDDEN_CLASS}]")
# What JSON Schema can say of the rule (all but NFC), for the API's schemas and the OpenAPI document.
PLAIN_TEXT = f"^[^{FORBIDDEN_CLASS}]*$"


def text_fault(text: str) -> str | None:
    """Why ``text`` may not be an identifier or a name, said for whoever sent it; None if it may."""
    found = _FORBIDDEN.search(text)
    if found is not None:
        char = found.group()
        what = unicodedata.name(char, "a control character")
        return (f"holds {what} (U+{ord(char):04X}) at character {found.start() + 1}: no control or "
                "bidirectional-control characters")
    if not unicodedata.is_normalized("NFC", text):
        return "is not in Unicode normalization form NFC (compose accented letters: é as U+00E9, not e and U+0301)"
    return None


def is_plain_text(text: str) -> bool:
    return text_fault(text) is None
