"""Shared fixtures: one block per part of triage, each under its own comment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


# --- model ---

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "inbox"
REPLIES = ROOT / "replies"


@pytest.fixture(scope="session")
def model():
    """The committed model (``triage train`` wrote it; test_training.py trains one of its own)."""
    from triage import classifier

    return classifier.load(ROOT / "models" / "triage.joblib")


@pytest.fixture
def local_settings(tmp_path):
    """Settings for the embedded default: a Maildir, journal and outbox under tmp_path."""
    from triage.config import load_settings

    return load_settings(
        _env_file=None,
        maildir=tmp_path / "mail",
        state_db=tmp_path / "triage.sqlite3",
        model_path=ROOT / "models" / "triage.joblib",
        replies_dir=REPLIES,
        training_dir=ROOT / "models" / "data",
    )


# --- SMTP server ---


@pytest.fixture(scope="session")
def smtp_certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from smtpserver import make_certificate

    return make_certificate(tmp_path_factory.mktemp("smtp"))


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on 127.0.0.1, plain, for this test; it keeps what it
    accepted (``received``), answers DATA from ``handler.answers``, and can be stopped and
    started again on the same port."""
    from smtpserver import LocalSmtpServer

    server = LocalSmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with the repo's models/ and replies/, as a user's checkout has
    them, and no TRIAGE_ mail servers or mode from the environment: the embedded default."""
    monkeypatch.chdir(tmp_path)
    for name in ("models", "replies"):
        (tmp_path / name).symlink_to(ROOT / name)
    for variable in ("TRIAGE_IMAP_HOST", "TRIAGE_SMTP_HOST", "TRIAGE_MODE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path
