"""ImapMailbox against a real Dovecot: the normal path never uses mocks."""

from __future__ import annotations

import imaplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapserver import LocalImapServer, free_port, new_user

from triage.errors import ConfigError, MailboxError
from triage.imap import ImapMailbox
from triage.mailbox import SOURCE_HEADER, TRIAGED_KEYWORD, Incoming, Mailbox

MakeMailbox = Callable[..., ImapMailbox]


def message(n: int, *, subject: str | None = None) -> bytes:
    return (
        f"From: Asker {n} <asker{n}@example.test>\r\n"
        "To: support@example.test\r\n"
        f"Subject: {subject or f'question {n}'}\r\n"
        f"Message-ID: <m{n}@example.test>\r\n"
        "Date: Mon, 2 Sep 2024 10:00:00 +0000\r\n"
        "\r\n"
        f"How do I do thing {n}?\r\n"
    ).encode()


@contextmanager
def raw_client(server: LocalImapServer, user: str) -> Iterator[Any]:
    """A second, independent connection: seeds mail and checks what the server holds."""
    with IMAPClient(server.host, server.port, ssl=False, timeout=10) as client:
        client.login(user, server.password)
        yield client


def seed(server: LocalImapServer, user: str, *messages: bytes, folder: str = "INBOX") -> None:
    with raw_client(server, user) as client:
        for start in range(0, len(messages), 100):
            client.multiappend(folder, list(messages[start : start + 100]))


def flags_of(server: LocalImapServer, user: str, folder: str, uid: int) -> set[bytes]:
    with raw_client(server, user) as client:
        client.select_folder(folder, readonly=True)
        # \Recent comes and goes with sessions (recipe pitfall 11): leave it out.
        return set(client.get_flags([uid])[uid]) - {b"\\Recent"}


@pytest.fixture
def make_mailbox(imap_server: LocalImapServer, imap_user: str) -> Iterator[MakeMailbox]:
    """ImapMailbox factory: IMAPS with the test CA by default; every mailbox closed afterwards."""
    made: list[ImapMailbox] = []

    def make(**overrides: Any) -> ImapMailbox:
        server = overrides.pop("server", imap_server)
        settings: dict[str, Any] = {
            "host": server.host,
            "port": server.ssl_port,
            "user": imap_user,
            "password": server.password,
            "tls": "ssl",
            "ca_file": server.ca_file,
            "timeout": 10.0,
        }
        settings.update(overrides)
        host, port, user, password = (settings.pop(k) for k in ("host", "port", "user", "password"))
        mailbox = ImapMailbox(host, port, user, password, **settings)
        made.append(mailbox)
        return mailbox

    yield make
    for mailbox in made:
        mailbox.close()


@pytest.fixture
def own_server() -> Iterator[LocalImapServer]:
    """A server of this test's own, for tests that stop or restart it."""
    server = LocalImapServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- reading ---------------------------------------------------------------------------------


def test_is_a_mailbox(make_mailbox: MakeMailbox, imap_user: str) -> None:
    mailbox = make_mailbox()
    assert isinstance(mailbox, Mailbox)
    assert mailbox.description == f"imap {imap_user}@127.0.0.1:{mailbox.port}"
    assert "secret" not in repr(mailbox)


def test_keys_and_fetch_round_trip(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    sent = [message(n) for n in (1, 2, 3)]
    seed(imap_server, imap_user, *sent)
    mailbox = make_mailbox()

    uidvalidity, uids = mailbox.keys()

    with raw_client(imap_server, imap_user) as client:
        assert uidvalidity == client.select_folder("INBOX")[b"UIDVALIDITY"]
    assert uids == ["1", "2", "3"]
    got = list(mailbox.fetch(["3", "1", "99"]))  # 99 does not exist: left out
    assert [(m.folder, m.uidvalidity, m.uid) for m in got] == [
        ("INBOX", uidvalidity, "1"),
        ("INBOX", uidvalidity, "3"),
    ]
    assert [m.raw for m in got] == [sent[0], sent[2]]


def test_fetch_in_batches_keeps_uid_order(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, *(message(n) for n in range(1, 251)))
    mailbox = make_mailbox()

    _, uids = mailbox.keys()
    got = list(mailbox.fetch(reversed(uids)))

    assert uids == [str(n) for n in range(1, 251)]
    assert [m.uid for m in got] == uids
    assert got[249].raw == message(250)


def test_fetch_does_not_set_seen(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, message(1), message(2))
    mailbox = make_mailbox()

    _, uids = mailbox.keys()
    assert len(list(mailbox.fetch(uids))) == 2

    status = imap_server.doveadm("mailbox", "status", "-u", imap_user, "messages unseen", "INBOX")
    assert status.split() == ["INBOX", "messages=2", "unseen=2"]


def test_keys_leave_out_deleted_messages(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, message(1), message(2))
    with raw_client(imap_server, imap_user) as client:
        client.select_folder("INBOX")
        client.add_flags([1], [b"\\Deleted"])

    assert make_mailbox().keys()[1] == ["2"]


def test_fetch_goes_on_after_other_calls_between_messages(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, *(message(n) for n in range(1, 151)))
    mailbox = make_mailbox()
    _, uids = mailbox.keys()

    got = []
    for incoming in mailbox.fetch(uids):
        got.append(incoming.uid)
        mailbox.find_draft(f"<m{incoming.uid}@example.test>")  # selects Drafts in between

    assert got == uids


def test_missing_folder_names_the_setting(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox(folder="Nope")

    with pytest.raises(MailboxError) as caught:
        mailbox.keys()

    assert str(caught.value) == (
        f"imap 127.0.0.1:{mailbox.port}: no folder 'Nope' for {mailbox.user} "
        "(Mailbox doesn't exist: Nope): check TRIAGE_IMAP_FOLDER"
    )


# --- writing ---------------------------------------------------------------------------------


def draft(source: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "support@example.test"
    msg["To"] = "asker1@example.test"
    msg["Subject"] = "Re: question 1"
    msg["In-Reply-To"] = source
    msg["References"] = source
    msg[SOURCE_HEADER] = source
    msg.set_content("Here is how.\n")
    return msg


def test_save_draft_lands_in_drafts_and_is_found(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    mailbox = make_mailbox()

    where = mailbox.save_draft(draft("<m1@example.test>"))

    assert where == "Drafts uid 1"
    assert flags_of(imap_server, imap_user, "Drafts", 1) == {b"\\Draft", b"\\Seen"}
    with raw_client(imap_server, imap_user) as client:
        client.select_folder("Drafts", readonly=True)
        raw = client.fetch([1], [b"BODY.PEEK[]"])[1][b"BODY[]"]
    assert b"\r\nX-Triage-Source: <m1@example.test>\r\n" in raw
    assert mailbox.find_draft("<m1@example.test>")
    assert not mailbox.find_draft("<m2@example.test>")
    assert not mailbox.find_draft("m1@example")  # a substring is not the id
    with pytest.raises(ValueError, match="empty"):
        mailbox.find_draft("  ")


def test_find_draft_sees_a_draft_saved_after_looking(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox()
    assert not mailbox.find_draft("<m1@example.test>")  # leaves Drafts selected

    mailbox.save_draft(draft("<m1@example.test>"))

    assert mailbox.find_draft("<m1@example.test>")


def test_find_draft_with_characters_imap_search_cannot_carry(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox()
    odd = "<(odd)*id%@example.test>"
    mailbox.save_draft(draft(odd))

    assert mailbox.find_draft(odd)
    assert not mailbox.find_draft("<(odd)*other%@example.test>")


def test_find_draft_ignores_deleted_drafts(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    mailbox = make_mailbox()
    mailbox.save_draft(draft("<m1@example.test>"))
    with raw_client(imap_server, imap_user) as client:
        client.select_folder("Drafts")
        client.add_flags([1], [b"\\Deleted"])

    assert not mailbox.find_draft("<m1@example.test>")


def test_mark_sets_keywords_and_flagged(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, message(1))
    mailbox = make_mailbox()
    [incoming] = mailbox.fetch(mailbox.keys()[1])

    mailbox.mark(incoming, [TRIAGED_KEYWORD, "triage-topic-events"], flagged=True)

    assert flags_of(imap_server, imap_user, "INBOX", 1) == {
        b"$Triaged",
        b"triage-topic-events",
        b"\\Flagged",
    }
    out = imap_server.doveadm(
        "fetch", "-u", imap_user, "uid flags", "mailbox", "INBOX", "keyword", "$Triaged"
    )
    assert "uid: 1" in out


def test_mark_twice_is_harmless(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, message(1))
    mailbox = make_mailbox()
    [incoming] = mailbox.fetch(mailbox.keys()[1])

    mailbox.mark(incoming, [TRIAGED_KEYWORD])
    mailbox.mark(incoming, [TRIAGED_KEYWORD])

    assert flags_of(imap_server, imap_user, "INBOX", 1) == {b"$Triaged"}


def test_mark_refuses_a_uid_from_another_uidvalidity(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    seed(imap_server, imap_user, message(1))
    mailbox = make_mailbox()
    uidvalidity, _ = mailbox.keys()
    stale = Incoming("INBOX", uidvalidity + 1, "1", b"")

    with pytest.raises(MailboxError, match="UIDVALIDITY"):
        mailbox.mark(stale, [TRIAGED_KEYWORD])

    assert flags_of(imap_server, imap_user, "INBOX", 1) == set()


def test_mark_a_message_that_is_gone(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox()
    uidvalidity, _ = mailbox.keys()

    with pytest.raises(MailboxError) as caught:
        mailbox.mark(Incoming("INBOX", uidvalidity, "7", b""), [TRIAGED_KEYWORD])

    assert str(caught.value) == (
        f"imap 127.0.0.1:{mailbox.port}: no message uid 7 in 'INBOX' any more "
        "(moved or deleted by someone else?)"
    )


def test_mark_rejects_a_keyword_that_is_not_an_atom(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox()
    with pytest.raises(ValueError, match="not an IMAP flag"):
        mailbox.mark(Incoming("INBOX", 1, "1", b""), ["two words"])


@pytest.mark.parametrize("has_move", [True, False], ids=["MOVE", "COPY+EXPUNGE"])
def test_move_creates_the_folder(
    make_mailbox: MakeMailbox,
    imap_server: LocalImapServer,
    imap_user: str,
    monkeypatch: pytest.MonkeyPatch,
    has_move: bool,
) -> None:
    seed(imap_server, imap_user, message(1), message(2))
    mailbox = make_mailbox()
    first = next(mailbox.fetch(mailbox.keys()[1]))
    target = mailbox.folder_path("Triage", "Events")
    if not has_move:
        client = mailbox._client
        real = client.has_capability
        monkeypatch.setattr(client, "has_capability", lambda cap: cap != "MOVE" and real(cap))

    mailbox.move(first, target)

    assert target == "Triage/Events"  # Dovecot's delimiter here is "/"
    assert mailbox.keys()[1] == ["2"]
    with raw_client(imap_server, imap_user) as client:
        assert client.folder_exists("Triage/Events")
        client.select_folder("INBOX", readonly=True)
        assert client.search("ALL") == [2]  # nothing left behind as \Deleted
        client.select_folder("Triage/Events", readonly=True)
        [uid] = client.search(["HEADER", "Message-ID", "<m1@example.test>"])
        assert b"\\Seen" not in client.get_flags([uid])[uid]


def test_append_and_special_folder(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    mailbox = make_mailbox()

    sent = mailbox.special_folder(b"\\Sent", "Sent Items")
    where = mailbox.append(sent, message(5), flags=["\\Seen"])
    mailbox.ensure_folder("Archive/2024/Q3")

    assert (sent, where) == ("Sent", "Sent uid 1")
    assert flags_of(imap_server, imap_user, "Sent", 1) == {b"\\Seen"}
    with raw_client(imap_server, imap_user) as client:
        assert client.folder_exists("Archive/2024/Q3")


# --- connecting ------------------------------------------------------------------------------


def test_default_ports() -> None:
    assert ImapMailbox("imap.example.org", None, "u", "p").port == 993
    assert ImapMailbox("imap.example.org", None, "u", "p", tls="starttls").port == 143
    assert ImapMailbox("127.0.0.1", None, "u", "p", tls="none").port == 143


def test_ssl_without_ca_file_is_refused(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox(ca_file=None)

    with pytest.raises(MailboxError) as caught:
        mailbox.keys()

    assert str(caught.value) == (
        f"imap 127.0.0.1:{mailbox.port}: TLS certificate not trusted (self-signed certificate): "
        "set TRIAGE_IMAP_CA_FILE to the CA certificate that signed the server's, or check that "
        "TRIAGE_IMAP_HOST is the name in the certificate"
    )


def test_ssl_with_ca_file_by_host_name(make_mailbox: MakeMailbox) -> None:
    assert make_mailbox(host="localhost").keys()[1] == []


def test_ssl_on_the_plain_port_points_at_the_tls_setting(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer
) -> None:
    mailbox = make_mailbox(port=imap_server.port)

    with pytest.raises(MailboxError, match=r"TLS handshake failed .*check TRIAGE_IMAP_TLS"):
        mailbox.connect()


def test_starttls(make_mailbox: MakeMailbox, imap_server: LocalImapServer) -> None:
    mailbox = make_mailbox(tls="starttls", port=imap_server.port)

    assert mailbox.keys()[1] == []
    assert mailbox._client._starttls_done


def test_starttls_checks_the_certificate(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer
) -> None:
    mailbox = make_mailbox(tls="starttls", port=imap_server.port, ca_file=None)

    with pytest.raises(MailboxError, match=r"certificate not trusted.*TRIAGE_IMAP_CA_FILE"):
        mailbox.connect()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_no_tls_to_loopback(make_mailbox: MakeMailbox, imap_server: LocalImapServer, host: str):
    mailbox = make_mailbox(host=host, tls="none", port=imap_server.port, ca_file=None)
    assert mailbox.keys()[1] == []


@pytest.mark.parametrize("host", ["mail.example.org", "10.0.0.5", "127.example.org"])
def test_no_tls_to_another_host_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_connection)

    with pytest.raises(ConfigError) as caught:
        ImapMailbox(host, None, "u", "p", tls="none")

    assert str(caught.value) == (
        f"TRIAGE_IMAP_TLS=none would send the password to {host} in clear text; it is only "
        "allowed to 127.0.0.1, ::1 or localhost: use ssl or starttls"
    )


def test_unknown_tls_mode() -> None:
    with pytest.raises(ConfigError, match="TRIAGE_IMAP_TLS='tls'"):
        ImapMailbox("imap.example.org", None, "u", "p", tls="tls")  # type: ignore[arg-type]


def test_unreadable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRIAGE_IMAP_CA_FILE: cannot load"):
        ImapMailbox("imap.example.org", None, "u", "p", ca_file=tmp_path / "missing.pem")


def test_wrong_password(make_mailbox: MakeMailbox, imap_user: str) -> None:
    mailbox = make_mailbox(password="not-the-Pa55word")

    with pytest.raises(MailboxError) as caught:
        mailbox.keys()

    text = str(caught.value)
    assert text == (
        f"imap 127.0.0.1:{mailbox.port}: login failed for {imap_user}: "
        "check TRIAGE_IMAP_USER and TRIAGE_IMAP_PASSWORD"
    )
    assert "not-the-Pa55word" not in text
    assert "not-the-Pa55word" not in repr(caught.value.__cause__)


def test_connection_refused(make_mailbox: MakeMailbox) -> None:
    port = free_port()
    mailbox = make_mailbox(port=port)

    with pytest.raises(MailboxError) as caught:
        mailbox.keys()

    assert str(caught.value) == (
        f"imap 127.0.0.1:{port}: connection refused: check TRIAGE_IMAP_HOST and "
        "TRIAGE_IMAP_PORT, and that the server is running"
    )
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_unknown_host(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox(host="no-such-host.invalid", port=993)

    with pytest.raises(MailboxError, match=r"^imap no-such-host.invalid:993: cannot resolve"):
        mailbox.connect()


# --- waiting ---------------------------------------------------------------------------------


def test_wait_wakes_up_when_mail_arrives(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    mailbox = make_mailbox()
    mailbox.keys()
    appended: list[float] = []

    def deliver() -> None:
        time.sleep(0.5)  # let wait() enter IDLE first
        seed(imap_server, imap_user, message(1))
        appended.append(time.monotonic())

    thread = threading.Thread(target=deliver)
    started = time.monotonic()
    thread.start()
    try:
        mailbox.wait(30)
        returned = time.monotonic()
    finally:
        thread.join()

    latency = returned - appended[0]
    print(f"IDLE wake-up latency: {latency * 1000:.0f} ms after APPEND completed")
    assert returned - started < 10
    assert mailbox.keys()[1] == ["1"]


def test_wait_returns_at_once_for_mail_that_came_after_keys(
    make_mailbox: MakeMailbox, imap_server: LocalImapServer, imap_user: str
) -> None:
    mailbox = make_mailbox()
    mailbox.keys()
    seed(imap_server, imap_user, message(1))

    started = time.monotonic()
    mailbox.wait(30)

    assert time.monotonic() - started < 10  # not the 30 s timeout (generous: shared machines)


def test_wait_times_out(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox()
    mailbox.keys()

    started = time.monotonic()
    mailbox.wait(0.5)
    elapsed = time.monotonic() - started

    assert 0.4 < elapsed < 10
    assert mailbox.keys() == mailbox.keys()  # the connection is usable after IDLE


def test_wait_is_capped_by_idle_seconds(make_mailbox: MakeMailbox) -> None:
    mailbox = make_mailbox(idle_seconds=0.3)

    started = time.monotonic()
    mailbox.wait(30)

    assert time.monotonic() - started < 15  # capped at 0.3 s, not the 30 s asked for


def test_wait_reconnects_after_idle_check_aborts(
    make_mailbox: MakeMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # imapclient issue #519: idle_check raises on a response split across TCP segments.
    mailbox = make_mailbox()
    mailbox.keys()
    broken = mailbox._client

    def split_response(timeout: float | None = None) -> list[Any]:
        raise imaplib.IMAP4.abort("socket error: unterminated line")

    monkeypatch.setattr(broken, "idle_check", split_response)

    mailbox.wait(5)

    assert mailbox._client is not broken
    assert mailbox.keys()[1] == []


# --- a server that goes away -----------------------------------------------------------------


def test_reconnect_after_server_restart(
    make_mailbox: MakeMailbox, own_server: LocalImapServer
) -> None:
    user = new_user("r")
    seed(own_server, user, message(1))
    mailbox = make_mailbox(server=own_server, user=user)
    assert mailbox.keys()[1] == ["1"]

    own_server.restart()
    mailbox.reconnect()

    assert mailbox.keys()[1] == ["1"]
    assert [m.raw for m in mailbox.fetch(["1"])] == [message(1)]


def test_reads_reconnect_by_themselves_after_a_restart(
    make_mailbox: MakeMailbox, own_server: LocalImapServer
) -> None:
    user = new_user("r")
    seed(own_server, user, message(1))
    mailbox = make_mailbox(server=own_server, user=user)
    mailbox.keys()

    own_server.restart()

    assert mailbox.keys()[1] == ["1"]


def test_writes_do_not_retry_after_a_restart(
    make_mailbox: MakeMailbox, own_server: LocalImapServer
) -> None:
    user = new_user("r")
    mailbox = make_mailbox(server=own_server, user=user)
    mailbox.save_draft(draft("<m1@example.test>"))

    own_server.restart()

    with pytest.raises(MailboxError, match="connection lost while trying to save a message"):
        mailbox.save_draft(draft("<m2@example.test>"))
    assert mailbox.save_draft(draft("<m2@example.test>")) == "Drafts uid 2"  # reconnected


def test_wait_during_a_restart_does_not_hang(
    make_mailbox: MakeMailbox, own_server: LocalImapServer
) -> None:
    user = new_user("r")
    mailbox = make_mailbox(server=own_server, user=user)
    mailbox.keys()
    timer = threading.Timer(0.5, own_server.restart)

    started = time.monotonic()
    timer.start()
    try:
        mailbox.wait(30)  # the BYE ends IDLE; wait() reconnects once the server is back
    finally:
        timer.join()

    assert time.monotonic() - started < 10
    assert mailbox.keys()[1] == []


def test_wait_gives_up_when_the_server_stays_away(
    make_mailbox: MakeMailbox, own_server: LocalImapServer
) -> None:
    user = new_user("r")
    mailbox = make_mailbox(server=own_server, user=user)
    mailbox.keys()
    timer = threading.Timer(0.3, own_server.stop)

    started = time.monotonic()
    timer.start()
    try:
        # Refused once Dovecot is gone; reset while it is shutting down (up to about 1 s).
        with pytest.raises(
            MailboxError, match=r"^imap [\d.:]+: (connection refused|cannot connect)"
        ):
            mailbox.wait(3)
    finally:
        timer.join()

    assert time.monotonic() - started < 8
