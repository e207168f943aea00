"""The API token that API writes need: given, or made at first start and kept beside the database.

A gateway started without one (no ``--api-token``, no ``GATEWAY_API_TOKEN``, no ``api_token``
in its file) makes one at its first start and keeps it in ``gateway.token`` beside its SQLite
database (in the working folder for other databases), readable by its owner only; later starts
read it back. The ``gateway`` client reads the same file when it runs in that folder against a
gateway on this machine, so a first start needs no configuration at all.

Standard library only at import: the client imports this module.
"""

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_ENV = "GATEWAY_API_TOKEN"
TOKEN_FILE = "gateway.token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def token_path(db_url: str) -> Path:
    """Where a gateway on ``db_url`` keeps its token: beside a SQLite file, else the working folder."""
    from sqlalchemy.engine import make_url  # here, not at import: the client never needs SQLAlchemy

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / TOKEN_FILE
    return Path(TOKEN_FILE)


def stored_or_new(path: Path) -> tuple[str, bool]:
    """The token kept at ``path``, or a new one; and whether it is new. A new one is not written
    here: ``keep_token`` writes it once the gateway has started, so a start that fails leaves
    no token file behind (and the next start, finding none, prints its token)."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token, False
    return secrets.token_hex(24), True  # hex never begins with '-', which a command line would take for an option


def keep_token(path: Path, token: str) -> None:
    """Write ``token`` at ``path``, readable by its owner only (mode 0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")


def local_token(url: str, folder: Path = Path(".")) -> str | None:
    """The token kept in ``folder`` for a gateway on this machine; None for another host (the
    file's token is this machine's gateway's, and is never sent elsewhere)."""
    if urlsplit(url).hostname not in LOCAL_HOSTS and not (urlsplit(url).hostname or "").startswith("127."):
        return None
    try:
        return (folder / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None
