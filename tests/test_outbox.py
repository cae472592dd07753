"""Outgoing mail against a real SMTP server (aiosmtpd): TLS modes, how refusals are read, and
the durable queue (exactly one send per message, retries with back-off, the Sent copy)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapserver import LocalImapServer
from smtpserver import LocalSmtpServer

from triage.config import load_settings
from triage.imap import ImapMailbox
from triage.journal import Journal
from triage.mailbox import Incoming
from triage.maildir import LocalMailbox
from triage.outbox import (
    LocalOutbox,
    OutboxQueue,
    SendError,
    SmtpOutbox,
    as_bytes,
    open_outbox,
)

ORIGINAL = Incoming("INBOX", 7, "3", b"")


def message(n: int = 1, *, to: str = "partner@example.test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ECT Support <support@example.test>"
    msg["To"] = to
    msg["Subject"] = f"Fwd: question {n}"
    msg["Message-ID"] = f"<fwd-{n}@example.test>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(f"Passing this on ({n}).\n")
    return msg


def smtp(server: LocalSmtpServer, **extra: Any) -> SmtpOutbox:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_tls": "none"
    }
    values.update(extra)
    return SmtpOutbox(load_settings(_env_file=None, **values), timeout=10)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "triage.sqlite3")
    yield j
    j.close()


# --- SmtpOutbox ------------------------------------------------------------------------------


def test_sends_the_exact_bytes_with_the_envelope_from_the_headers(
    smtp_server: LocalSmtpServer,
) -> None:
    msg = message()
    msg["Cc"] = "Someone Else <cc@example.test>"

    where = smtp(smtp_server).send(msg)

    assert where == f"smtp 127.0.0.1:{smtp_server.port}"
    [received] = smtp_server.received
    assert received.mail_from == "support@example.test"
    assert received.rcpt_tos == ("partner@example.test", "cc@example.test")
    assert received.content == as_bytes(msg)


def test_eight_bit_mail_is_sent_as_8bitmime(smtp_server: LocalSmtpServer) -> None:
    msg = message()
    msg.set_content("Grüße aus Köln\n", cte="8bit")
    raw = as_bytes(msg)
    assert not raw.isascii()

    smtp(smtp_server).send(msg)

    [received] = smtp_server.received
    assert received.content == raw
    assert "BODY=8BITMIME" in received.mail_options


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_tls_modes_verify_the_certificate(
    smtp_certificate: tuple[Path, Path], tls: str
) -> None:
    cert, key = smtp_certificate
    with LocalSmtpServer(tls=tls, cert=cert, key=key) as server:  # type: ignore[arg-type]
        smtp(server, smtp_tls=tls, imap_ca_file=cert).send(message())
        assert len(server.received) == 1

        with pytest.raises(SendError) as caught:
            smtp(server, smtp_tls=tls).send(message(2))  # the test CA is not trusted
    assert caught.value.temporary and caught.value.code is None
    assert "TLS failed" in str(caught.value) and "TRIAGE_SMTP_TLS" in str(caught.value)
    assert len(server.received) == 1


def test_refused_connection_is_temporary_and_names_the_server() -> None:
    server = LocalSmtpServer()  # never started: nobody listens on its port

    with pytest.raises(SendError) as caught:
        smtp(server).send(message())

    assert str(caught.value).startswith(f"smtp 127.0.0.1:{server.port}: cannot connect (")
    assert caught.value.temporary and caught.value.code is None


@pytest.mark.parametrize(
    ("answer", "temporary"),
    [("451 4.3.0 Try again later", True), ("550 5.7.1 Rejected", False)],
    ids=["451", "550"],
)
def test_replies_to_data(smtp_server: LocalSmtpServer, answer: str, temporary: bool) -> None:
    smtp_server.handler.answers = [answer]

    with pytest.raises(SendError) as caught:
        smtp(smtp_server).send(message())

    code, _, text = answer.partition(" ")
    assert caught.value.temporary is temporary
    assert caught.value.code == int(code)
    assert str(caught.value) == f"smtp 127.0.0.1:{smtp_server.port}: refused with {code} {text}"


def test_recipient_refused_is_permanent(smtp_server: LocalSmtpServer) -> None:
    smtp_server.handler.rcpt_answers = ["550 5.1.1 No such user"]

    with pytest.raises(SendError) as caught:
        smtp(smtp_server).send(message())

    assert not caught.value.temporary and caught.value.code == 550
    assert "partner@example.test: 550 5.1.1 No such user" in str(caught.value)
    assert smtp_server.received == []


def test_open_outbox_picks_smtp_or_the_local_folder(tmp_path: Path) -> None:
    local = load_settings(_env_file=None, maildir=tmp_path / "mail")
    remote = load_settings(_env_file=None, smtp_host="127.0.0.1", smtp_port=2525, smtp_tls="none")

    assert isinstance(open_outbox(local), LocalOutbox)
    assert isinstance(open_outbox(remote), SmtpOutbox)
    assert not open_outbox(local).sent_copy and open_outbox(remote).sent_copy


# --- the queue -------------------------------------------------------------------------------


def test_a_message_is_queued_once_per_entry(
    smtp_server: LocalSmtpServer, journal: Journal
) -> None:
    queue = OutboxQueue(smtp(smtp_server), journal)

    first = queue.submit(message(1), kind="forward", entry_id=1, source=ORIGINAL, mailbox=None)
    # A retry after a crash renders the forward again, with a new Message-ID: not sent again.
    again = queue.submit(message(2), kind="forward", entry_id=1, source=ORIGINAL, mailbox=None)

    assert first.status == "sent" and first.detail.endswith("as <fwd-1@example.test>")
    assert again.status == "sent" and again.detail == "already sent as <fwd-1@example.test>"
    assert len(smtp_server.received) == 1
    [item] = journal.queue_entries()
    assert (item.entry_id, item.folder, item.uidvalidity, item.uid) == (1, "INBOX", 7, "3")
    assert (item.status, item.attempts) == ("sent", 1)


def test_retries_back_off_doubling_with_jitter_up_to_the_cap(journal: Journal) -> None:
    server = LocalSmtpServer()  # not listening
    queue = OutboxQueue(smtp(server), journal, retry_start=30, retry_cap=200)

    queue.submit(message(), kind="forward", entry_id=1, source=ORIGINAL, mailbox=None)
    pauses = []
    for _ in range(6):
        [item] = journal.queue_entries()
        pauses.append(item.next_attempt_at - time.time())
        queue.flush(None, now=item.next_attempt_at)

    for attempt, pause in enumerate(pauses):
        ceiling = min(200, 30 * 2**attempt)
        assert ceiling * 0.5 - 1 <= pause <= ceiling, (attempt, pauses)
    [item] = journal.queue_entries()
    assert (item.status, item.attempts) == ("queued", 7)  # never dropped
    assert "cannot connect" in item.last_error


def test_server_down_the_rest_wait_without_being_tried(
    smtp_server: LocalSmtpServer, journal: Journal
) -> None:
    queue = OutboxQueue(smtp(smtp_server), journal, retry_start=0)
    smtp_server.stop()
    for n in (1, 2, 3):
        delivery = queue.submit(message(n), kind="forward", entry_id=n, source=None, mailbox=None)
        assert delivery.status == "queued"

    assert [i.attempts for i in journal.queue_entries()] == [1, 0, 0]  # one try found it down
    smtp_server.start()
    assert [d.status for d in queue.flush(None)] == ["sent"] * 3
    assert sorted(r.message.get("Message-ID") for r in smtp_server.received) == [
        "<fwd-1@example.test>", "<fwd-2@example.test>", "<fwd-3@example.test>"
    ]
    assert queue.flush(None) == []
    assert queue.next_due() is None


def test_a_row_left_sending_is_sent_again(
    smtp_server: LocalSmtpServer, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    # A crash after "sending" was committed: did the server get it? Unknown, so send again.
    item = journal.enqueue(
        entry_id=1, kind="forward", recipient="partner@example.test",
        message_id="<fwd-1@example.test>", raw=as_bytes(message()),
    )
    journal.queue_sending(item.id)

    [delivery] = OutboxQueue(smtp(smtp_server), journal).flush(None)

    assert delivery.status == "sent"
    assert "may or may not have been sent before a crash" in caplog.text
    assert [r.content for r in smtp_server.received] == [as_bytes(message())]


def test_sent_copy_goes_to_the_imap_sent_folder_once(
    smtp_server: LocalSmtpServer, journal: Journal, imap_server: LocalImapServer, imap_user: str
) -> None:
    with ImapMailbox(imap_server.host, imap_server.port, imap_user, "secret", tls="none") as box:
        queue = OutboxQueue(smtp(smtp_server), journal)
        queue.submit(message(), kind="forward", entry_id=1, source=ORIGINAL, mailbox=box)
        [item] = journal.queue_entries()
        assert item.copied == 1

        # A crash between the APPEND and its record: the next pass finds the copy in Sent.
        journal.queue_copied(item.id, -1)
        queue.flush(box)

        [item] = journal.queue_entries()
        assert item.copied == 1
    with IMAPClient(imap_server.host, imap_server.port, ssl=False) as client:
        client.login(imap_user, "secret")
        client.select_folder("Sent", readonly=True)
        [uid] = client.search("ALL")
        data = client.fetch([uid], ["FLAGS", "BODY.PEEK[]"])[uid]
    assert b"\\Seen" in data[b"FLAGS"]
    assert data[b"BODY[]"] == as_bytes(message())


def test_a_sent_copy_that_failed_is_made_on_a_later_pass(
    smtp_server: LocalSmtpServer, journal: Journal, imap_server: LocalImapServer, imap_user: str
) -> None:
    with ImapMailbox(imap_server.host, imap_server.port, imap_user, "wrong", tls="none") as bad:
        queue = OutboxQueue(smtp(smtp_server), journal)
        delivery = queue.submit(message(), kind="forward", entry_id=1, source=None, mailbox=bad)
    assert delivery.status == "sent"  # sent, even though the copy could not be filed
    assert journal.queue_entries()[0].copied == -1

    with ImapMailbox(imap_server.host, imap_server.port, imap_user, "secret", tls="none") as box:
        queue.flush(box)
        assert box.holds("Sent", "<fwd-1@example.test>")
    assert journal.queue_entries()[0].copied == 1
    assert len(smtp_server.received) == 1


def test_local_outbox_keeps_no_sent_copy(tmp_path: Path, journal: Journal) -> None:
    mailbox = LocalMailbox(tmp_path / "mail")
    queue = OutboxQueue(LocalOutbox(tmp_path / "mail"), journal)

    delivery = queue.submit(message(), kind="forward", entry_id=1, source=None, mailbox=mailbox)

    assert delivery.status == "sent"
    assert len(list((tmp_path / "mail" / ".Outbox" / "new").iterdir())) == 1
    assert not (tmp_path / "mail" / ".Sent").exists()
