"""Shared fixtures: one block per part of triage, each under its own comment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imapserver import LocalImapServer, new_user

# --- IMAP server ---


@pytest.fixture(scope="session")
def imap_server() -> Iterator[LocalImapServer]:
    """One real Dovecot on 127.0.0.1 for the whole run; tests keep apart by using fresh users."""
    server = LocalImapServer()
    server.start()  # waits for the greeting; raises with Dovecot's log if it never comes
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_user() -> str:
    """A user name nobody has used yet in this run: a fresh, empty mailbox on ``imap_server``."""
    return new_user("t")
