"""The worker on a real IMAP server (Dovecot) with a real SMTP server (aiosmtpd): drafts, forwards,
hand-offs, IDLE, signals, crashes and restarts. The normal path never uses mocks; a monkeypatch
only injects a crash where no real server can produce one on demand."""

from __future__ import annotations

import email
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from conftest import REPLIES, ROOT, SAMPLES
from imapclient import IMAPClient
from imapserver import LocalImapServer, new_user
from smtpserver import LocalSmtpServer

from triage import cli
from triage.cli import open_mailbox
from triage.config import Settings, load_settings
from triage.errors import MailboxError
from triage.journal import Journal
from triage.maildir import LocalMailbox
from triage.outbox import open_outbox
from triage.worker import BACKOFF_CAP_SECONDS, BACKOFF_START_SECONDS, Worker

# Samples with a clear decision from the committed model (see `triage classify samples/inbox`).
REPLY = "myect-login-01"  # reply: a draft
EVENTS = "events-02"  # reply, and a forward to the delivery partner (routing.toml: both)
OTHER = "other-data-request"  # not an FAQ question: hand-off
AUTOMATIC = "auto-ooo-01"  # out-of-office: nothing at all
DELIVERY_PARTNER = "delivery-partners@ect.example.org"  # Settings' default address

MakeWorker = Callable[..., Worker]


# --- helpers ---------------------------------------------------------------------------------


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


def message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Message-ID"]).strip()


def with_message_id(raw: bytes, new_id: str) -> bytes:
    """The same mail under another Message-ID (many distinct messages from a few samples)."""
    return re.sub(rb"(?im)^Message-ID:[^\n]*$", f"Message-ID: {new_id}".encode(), raw, count=1)


@contextmanager
def imap(server: LocalImapServer, user: str) -> Iterator[Any]:
    """An independent connection: seeds mail and checks what the server holds."""
    with IMAPClient(server.host, server.port, ssl=False, timeout=10) as client:
        client.login(user, server.password)
        yield client


def seed(server: LocalImapServer, user: str, *messages: bytes, folder: str = "INBOX") -> None:
    with imap(server, user) as client:
        for start in range(0, len(messages), 100):
            client.multiappend(folder, list(messages[start : start + 100]))


def contents(
    server: LocalImapServer, user: str, folder: str
) -> dict[int, tuple[set[bytes], bytes]]:
    """uid -> (flags without \\Recent, raw bytes) of every message in ``folder``."""
    with imap(server, user) as client:
        if not client.folder_exists(folder):
            return {}
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        if not uids:
            return {}
        found = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
    return {
        uid: (set(data[b"FLAGS"]) - {b"\\Recent"}, bytes(data[b"BODY[]"]))
        for uid, data in found.items()
    }


def parsed(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=default)  # type: ignore[return-value]


def count(server: LocalImapServer, user: str, folder: str) -> int:
    with imap(server, user) as client:
        return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def imap_settings(
    server: LocalImapServer, user: str, tmp_path: Path, smtp: LocalSmtpServer | None, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "imap_host": server.host,
        "imap_port": server.port,
        "imap_tls": "none",
        "imap_user": user,
        "imap_password": "secret",
        "state_db": tmp_path / "state" / "triage.sqlite3",
        "model_path": ROOT / "models" / "triage.joblib",
        "replies_dir": REPLIES,
        "maildir": tmp_path / "mail",
    }
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="none")
    values.update(extra)
    return load_settings(_env_file=None, **values)


def build_worker(settings: Settings, model: Any) -> Worker:
    """A worker wired as ``triage run`` wires it; a new one is a restarted process as far as
    state goes (a new connection and a new journal handle)."""
    worker = Worker(
        settings,
        mailbox=open_mailbox(settings),
        outbox=open_outbox(settings),
        model=model,
        journal=Journal(settings.state_db),
    )
    worker.queue.retry_start = 0.0  # queued mail is due again on the next pass
    return worker


def close(worker: Worker) -> None:
    worker.mailbox.close()
    worker.journal.close()


@pytest.fixture
def make_worker(model: Any) -> Iterator[MakeWorker]:
    """Worker factory; every mailbox and journal closed after the test."""
    made: list[Worker] = []

    def make(settings: Settings) -> Worker:
        made.append(build_worker(settings, model))
        return made[-1]

    yield make
    for worker in made:
        close(worker)


@contextmanager
def running(settings: Settings, model: Any) -> Iterator[threading.Event]:
    """``run_forever`` of a new worker in a thread (built and closed there: a journal belongs to
    the thread that opened it); stopped, and checked to stop, on the way out."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker = build_worker(settings, model)
            try:
                worker.run_forever(stop)
            finally:
                close(worker)
        except BaseException as exc:  # reported in the test, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="worker")
    thread.start()
    try:
        yield stop
        assert not failure, f"run_forever raised {failure[0]!r}"
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "run_forever did not stop within 15 s of stop.set()"
    assert not failure, f"run_forever raised {failure[0]!r}"


def journal_entries(settings: Settings) -> list[Any]:
    journal = Journal(settings.state_db)
    try:
        return list(journal)
    finally:
        journal.close()


@pytest.fixture
def own_server() -> Iterator[LocalImapServer]:
    """A Dovecot of this test's own, to restart or stop."""
    server = LocalImapServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def drafts_by_source(server: LocalImapServer, user: str) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for _flags, raw in contents(server, user, "Drafts").values():
        draft = parsed(raw)
        out.setdefault(str(draft["X-Triage-Source"]), []).append(draft)
    return out


# --- 1. end to end -----------------------------------------------------------------------------


def test_run_once_drafts_forwards_hands_off_and_leaves_automatic_mail(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    names = [REPLY, EVENTS, OTHER, AUTOMATIC]
    seed(imap_server, imap_user, *(sample(n) for n in names))
    before = contents(imap_server, imap_user, "INBOX")
    uid_of = {n: uid for n, uid in zip(names, sorted(before), strict=True)}
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))

    summary = worker.run_once()

    assert [o.status for o in summary.outcomes] == ["done"] * 4
    assert [o.decision.action for o in summary.outcomes] == ["reply", "reply", "human", "ignore"]

    # Drafts: one per reply, \Draft, threaded under the original, with the triage headers.
    drafts = drafts_by_source(imap_server, imap_user)
    assert set(drafts) == {message_id(sample(REPLY)), message_id(sample(EVENTS))}
    for flags, raw in contents(imap_server, imap_user, "Drafts").values():
        assert b"\\Draft" in flags
        draft = parsed(raw)
        source = str(draft["X-Triage-Source"])
        assert str(draft["In-Reply-To"]) == source
        assert str(draft["References"]).split()[-1] == source
        assert str(draft["Subject"]).startswith("Re: ")
        assert 0 <= float(draft["X-Triage-Confidence"]) <= 1
    assert str(drafts[message_id(sample(REPLY))][0]["X-Triage-Topic"]) == "myect-login"
    assert str(drafts[message_id(sample(EVENTS))][0]["X-Triage-Topic"]) == "events"

    # Originals: content untouched, never \Seen; keywords tell what happened.
    after = contents(imap_server, imap_user, "INBOX")
    assert {uid: raw for uid, (_, raw) in after.items()} == {
        uid: raw for uid, (_, raw) in before.items()
    }
    flags = {name: after[uid_of[name]][0] for name in names}
    assert flags[REPLY] == {b"$Triaged"}
    assert flags[EVENTS] == {b"$Triaged"}
    assert flags[OTHER] == {b"$Triaged", b"$TriageHuman", b"\\Flagged"}
    assert flags[AUTOMATIC] == set()

    # The forward went out over SMTP with the original attached, and a copy is in Sent.
    [forward] = smtp_server.received
    assert forward.rcpt_tos == (DELIVERY_PARTNER,)
    sent = forward.message
    assert str(sent["X-Triage-Topic"]) == "events"
    assert str(sent["Auto-Submitted"]) == "auto-replied"
    [attached] = [p for p in sent.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert str(attached.get_content()["Message-ID"]) == message_id(sample(EVENTS))
    [(sent_flags, sent_copy)] = contents(imap_server, imap_user, "Sent").values()
    assert b"\\Seen" in sent_flags
    assert sent_copy == forward.content

    # A second run does nothing at all.
    again = worker.run_once()
    assert again.outcomes == [] and again.skipped == 4
    assert count(imap_server, imap_user, "Drafts") == 2
    assert count(imap_server, imap_user, "Sent") == 1
    assert len(smtp_server.received) == 1
    assert contents(imap_server, imap_user, "INBOX") == after


def test_hand_off_is_moved_to_the_configured_folder(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, make_worker: MakeWorker
) -> None:
    seed(imap_server, imap_user, sample(REPLY), sample(OTHER))
    settings = imap_settings(
        imap_server, imap_user, tmp_path, None, imap_handoff_folder="Triage/Human"
    )

    make_worker(settings).run_once()

    inbox = contents(imap_server, imap_user, "INBOX")
    assert [parsed(raw)["Message-ID"] for _, raw in inbox.values()] == [message_id(sample(REPLY))]
    [(flags, raw)] = contents(imap_server, imap_user, "Triage/Human").values()
    assert message_id(raw) == message_id(sample(OTHER))
    assert flags == {b"$Triaged", b"$TriageHuman", b"\\Flagged"}


def test_triage_run_once_from_the_environment(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(imap_server, imap_user, *(sample(n) for n in (REPLY, EVENTS, OTHER, AUTOMATIC)))
    monkeypatch.chdir(tmp_path)  # no .env of the repo's
    for name, value in {
        "TRIAGE_IMAP_HOST": imap_server.host,
        "TRIAGE_IMAP_PORT": str(imap_server.port),
        "TRIAGE_IMAP_TLS": "none",
        "TRIAGE_IMAP_USER": imap_user,
        "TRIAGE_IMAP_PASSWORD": "secret",
        "TRIAGE_SMTP_HOST": "127.0.0.1",
        "TRIAGE_SMTP_PORT": str(smtp_server.port),
        "TRIAGE_SMTP_TLS": "none",
        "TRIAGE_STATE_DB": str(tmp_path / "triage.sqlite3"),
        "TRIAGE_MODEL_PATH": str(ROOT / "models" / "triage.joblib"),
        "TRIAGE_REPLIES_DIR": str(REPLIES),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TRIAGE_MODE", raising=False)

    assert cli.main(["run", "--once"]) == 0
    out = capsys.readouterr().out
    assert "4 new messages handled" in out
    assert f"drafts are in the Drafts folder of {imap_user} on {imap_server.host}" in out
    assert count(imap_server, imap_user, "Drafts") == 2
    assert len(smtp_server.received) == 1

    assert cli.main(["run", "--once"]) == 0
    assert "0 new messages handled, 4 already in the journal" in capsys.readouterr().out
    assert count(imap_server, imap_user, "Drafts") == 2
    assert len(smtp_server.received) == 1


# --- batched writes: one MULTIAPPEND and one STORE per batch --------------------------------


def test_a_batch_saves_its_drafts_together_in_message_order(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    raws = [with_message_id(sample(REPLY), f"<batch-{n}@example.test>") for n in range(5)]
    raws.insert(2, sample(EVENTS))
    raws.insert(4, sample(OTHER))
    seed(imap_server, imap_user, *raws)
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))

    summary = worker.run_once()

    drafts = contents(imap_server, imap_user, "Drafts")
    by_uid = {o.uid: o for o in summary.outcomes}
    for uid, raw in enumerate(raws, start=1):
        outcome = by_uid[str(uid)]
        if outcome.decision.action != "reply":
            assert "draft" not in outcome.detail
            continue
        draft_uid = int(re.search(r"draft Drafts uid (\d+)", outcome.detail)[1])  # type: ignore[index]
        assert parsed(drafts[draft_uid][1])["X-Triage-Source"] == message_id(raw)
    assert len(drafts) == 6
    assert by_uid["3"].detail.startswith("draft Drafts uid 3; forward to ")
    assert by_uid["3"].detail.endswith("; marked")
    assert by_uid["5"].detail == "flagged for a human"
    assert len(smtp_server.received) == 1
    flags = {uid: f for uid, (f, _) in contents(imap_server, imap_user, "INBOX").items()}
    assert flags[5] == {b"$Triaged", b"$TriageHuman", b"\\Flagged"}
    assert all(flags[uid] == {b"$Triaged"} for uid in (1, 2, 3, 4, 6, 7))


def test_the_same_message_twice_in_one_batch_gets_one_draft(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, make_worker: MakeWorker
) -> None:
    seed(imap_server, imap_user, sample(REPLY), sample(OTHER), sample(REPLY))

    summary = make_worker(imap_settings(imap_server, imap_user, tmp_path, None)).run_once()

    assert [o.decision.action for o in summary.outcomes] == ["reply", "human", "ignore"]
    assert "already handled as journal entry 1" in summary.outcomes[2].decision.reason
    assert count(imap_server, imap_user, "Drafts") == 1


def test_a_refused_forward_in_a_batch_hands_off_only_its_message(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    smtp_server.handler.answers = ["550 5.1.1 No such user here"]  # then accept
    first, second = (with_message_id(sample(EVENTS), f"<ev-{n}@example.test>") for n in (1, 2))
    seed(imap_server, imap_user, first, second, sample(REPLY))
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))

    outcomes = worker.run_once().outcomes

    assert "refused: handed to a human" in outcomes[0].detail
    assert "sent via smtp" in outcomes[1].detail
    flags = {uid: f for uid, (f, _) in contents(imap_server, imap_user, "INBOX").items()}
    assert flags == {
        1: {b"$Triaged", b"$TriageHuman", b"\\Flagged"},
        2: {b"$Triaged"},
        3: {b"$Triaged"},
    }
    entries = list(worker.journal)
    assert "550" in entries[0].error and entries[1].error == ""
    assert [i.handed_off for i in worker.journal.queue_entries()] == [True, False]
    assert count(imap_server, imap_user, "Drafts") == 3


def test_a_crash_after_a_batch_is_written_writes_nothing_twice(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raws = [with_message_id(sample(REPLY), f"<crash-{n}@example.test>") for n in range(4)]
    seed(imap_server, imap_user, *raws, sample(EVENTS), sample(OTHER))
    settings = imap_settings(imap_server, imap_user, tmp_path, smtp_server)

    def crash(self: Journal, entry_id: int, **kwargs: Any) -> None:
        raise RuntimeError("simulated crash before the first outcome is journalled")

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "finish", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            make_worker(settings).run_once()
    assert count(imap_server, imap_user, "Drafts") == 5
    assert len(smtp_server.received) == 1

    summary = make_worker(settings).run_once()

    assert len(summary.outcomes) == 6 and all(o.status == "done" for o in summary.outcomes)
    assert sum("draft already in Drafts" in o.detail for o in summary.outcomes) == 5
    assert count(imap_server, imap_user, "Drafts") == 5
    assert len(smtp_server.received) == 1
    assert all(len(d) == 1 for d in drafts_by_source(imap_server, imap_user).values())


# --- 2. forwards over SMTP -------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_forward_over_tls(
    imap_server: LocalImapServer,
    imap_user: str,
    tmp_path: Path,
    make_worker: MakeWorker,
    smtp_certificate: tuple[Path, Path],
    tls: str,
) -> None:
    cert, key = smtp_certificate
    with LocalSmtpServer(tls=tls, cert=cert, key=key) as smtp:  # type: ignore[arg-type]
        seed(imap_server, imap_user, sample(EVENTS))
        settings = imap_settings(
            imap_server, imap_user, tmp_path, smtp, smtp_tls=tls, imap_ca_file=cert
        )

        [outcome] = make_worker(settings).run_once().outcomes

        assert f"sent via smtp 127.0.0.1:{smtp.port}" in outcome.detail
        assert [r.rcpt_tos for r in smtp.received] == [(DELIVERY_PARTNER,)]


def test_smtp_down_queues_the_forward_until_it_is_back(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    seed(imap_server, imap_user, sample(EVENTS))
    settings = imap_settings(imap_server, imap_user, tmp_path, smtp_server)
    smtp_server.stop()
    worker = make_worker(settings)

    [outcome] = worker.run_once().outcomes

    assert outcome.status == "done"
    assert "forward to delivery-partners@ect.example.org queued" in outcome.detail
    assert "connection refused" in outcome.detail.lower()
    assert count(imap_server, imap_user, "Drafts") == 1  # the rest of the work is done
    [queued] = worker.journal.queue_entries()
    assert (queued.status, queued.attempts) == ("queued", 1)
    assert worker.run_once().deliveries[0].status == "queued"  # still down: still queued

    smtp_server.start()
    summary = worker.run_once()

    assert [d.status for d in summary.deliveries] == ["sent"]
    assert "  outbox: sent 1" in summary.lines(drafts_at="Drafts")
    [received] = smtp_server.received
    assert message_id(received.content) == queued.message_id
    assert count(imap_server, imap_user, "Sent") == 1

    # Exactly once: later passes, and a restarted worker, send nothing more.
    worker.run_once()
    make_worker(settings).run_once()
    assert len(smtp_server.received) == 1
    assert count(imap_server, imap_user, "Sent") == 1
    assert count(imap_server, imap_user, "Drafts") == 1


def test_451_is_retried_and_then_sent(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    smtp_server.handler.answers = ["451 4.3.0 Temporary local problem, try again later"]
    seed(imap_server, imap_user, sample(EVENTS))
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))

    [outcome] = worker.run_once().outcomes
    assert "queued" in outcome.detail and "451" in outcome.detail
    assert smtp_server.received == []

    assert [d.status for d in worker.run_once().deliveries] == ["sent"]
    worker.run_once()
    assert smtp_server.handler.attempts == 2
    assert len(smtp_server.received) == 1
    [item] = worker.journal.queue_entries()
    assert (item.status, item.attempts, item.copied) == ("sent", 2, 1)


def test_550_hands_the_message_to_a_human(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    smtp_server.handler.answers = ["550 5.1.1 No such user here"]
    seed(imap_server, imap_user, sample(EVENTS))
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))

    [outcome] = worker.run_once().outcomes

    assert outcome.status == "done"
    assert f"forward to {DELIVERY_PARTNER} refused: handed to a human" in outcome.detail
    [(flags, _)] = contents(imap_server, imap_user, "INBOX").values()
    assert flags == {b"$Triaged", b"$TriageHuman", b"\\Flagged"}
    assert count(imap_server, imap_user, "Drafts") == 1  # the reply draft is still there
    [entry] = list(worker.journal)
    assert entry.status == "done"
    assert "550" in entry.error and "No such user here" in entry.error
    [item] = worker.journal.queue_entries()
    assert (item.status, item.handed_off) == ("refused", True)

    worker.run_once()  # a refusal is final: never tried again
    assert smtp_server.handler.attempts == 1
    assert smtp_server.received == []
    assert count(imap_server, imap_user, "Sent") == 0


def test_550_on_a_retry_hands_off_on_that_pass(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
) -> None:
    smtp_server.handler.answers = ["451 4.3.0 try later", "554 5.7.1 Message rejected"]
    seed(imap_server, imap_user, sample(EVENTS))
    worker = make_worker(imap_settings(imap_server, imap_user, tmp_path, smtp_server))
    worker.run_once()
    [(flags, _)] = contents(imap_server, imap_user, "INBOX").values()
    assert flags == {b"$Triaged"}

    assert [d.status for d in worker.run_once().deliveries] == ["refused"]

    [(flags, _)] = contents(imap_server, imap_user, "INBOX").values()
    assert flags == {b"$Triaged", b"$TriageHuman", b"\\Flagged"}
    [entry] = list(worker.journal)
    assert "554" in entry.error and "handed to a human" in entry.outcome
    assert worker.run_once().deliveries == []


# --- 3. new mail while idle, and signals ---------------------------------------------------


def test_mail_that_arrives_while_idle_gets_its_draft_quickly(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, model: Any
) -> None:
    with running(imap_settings(imap_server, imap_user, tmp_path, None), model):
        time.sleep(1.0)  # the first pass finds nothing; the worker is in IDLE now
        seed(imap_server, imap_user, sample(REPLY))
        appended = time.monotonic()
        assert wait_until(lambda: count(imap_server, imap_user, "Drafts") == 1, 10, step=0.02)
        latency = time.monotonic() - appended
    print(f"\nIDLE: new mail to draft in Drafts: {latency * 1000:.0f} ms after APPEND completed")
    assert latency < 10


def test_run_forever_on_the_local_maildir_sees_new_mail_and_stops_at_once(
    local_settings: Settings, model: Any
) -> None:
    drafts = local_settings.maildir / ".Drafts" / "cur"
    with running(local_settings, model) as stop:
        time.sleep(0.5)  # idle now
        LocalMailbox(local_settings.maildir).add(sample(REPLY))
        assert wait_until(lambda: drafts.is_dir() and any(drafts.iterdir()), 10)
        stop.set()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10  # not the 60 s poll interval


def _environment(server: LocalImapServer, user: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(
        TRIAGE_IMAP_HOST=server.host,
        TRIAGE_IMAP_PORT=str(server.port),
        TRIAGE_IMAP_TLS="none",
        TRIAGE_IMAP_USER=user,
        TRIAGE_IMAP_PASSWORD="secret",
        TRIAGE_STATE_DB=str(tmp_path / "triage.sqlite3"),
        TRIAGE_MODEL_PATH=str(ROOT / "models" / "triage.joblib"),
        TRIAGE_REPLIES_DIR=str(REPLIES),
        TRIAGE_MAILDIR=str(tmp_path / "mail"),
        PYTHONPATH=str(ROOT),
    )
    return env


@contextmanager
def triage_run(
    server: LocalImapServer, user: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``triage run`` in a process of its own; killed if the test leaves it running."""
    log = tmp_path / "triage.log"
    with open(log, "wb") as err, subprocess.Popen(
        [sys.executable, "-m", "triage", "run"],
        cwd=tmp_path,
        env=_environment(server, user, tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=err,
        stderr=subprocess.STDOUT,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_current_message_and_exits_0(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, signum: signal.Signals
) -> None:
    many = [with_message_id(sample(REPLY), f"<sig-{n}@example.test>") for n in range(300)]
    seed(imap_server, imap_user, *many)

    with triage_run(imap_server, imap_user, tmp_path) as proc:
        started = wait_until(lambda: count(imap_server, imap_user, "Drafts") > 0, 60)
        assert started, (tmp_path / "triage.log").read_text()
        proc.send_signal(signum)
        code = proc.wait(timeout=30)

    output = (tmp_path / "triage.log").read_text()
    assert code == 0, output
    assert "finishing the current message, then stopping" in output
    assert "Traceback" not in output
    journal = Journal(tmp_path / "triage.sqlite3")
    try:
        entries = list(journal)
    finally:
        journal.close()
    assert entries and all(e.status == "done" for e in entries)  # nothing left half done
    drafts = drafts_by_source(imap_server, imap_user)
    assert sorted(drafts) == sorted(e.message_id for e in entries)  # one draft per entry
    assert all(len(d) == 1 for d in drafts.values())
    print(f"\n{signum.name}: stopped after {len(entries)} of {len(many)} messages")


def test_signal_while_idle_exits_0_at_once(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path
) -> None:
    with triage_run(imap_server, imap_user, tmp_path) as proc:
        log = tmp_path / "triage.log"
        assert wait_until(lambda: "watching imap" in log.read_text(), 60), log.read_text()
        time.sleep(0.5)  # into IDLE
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - signalled
    assert code == 0, log.read_text()
    assert took < 30  # not the 300 s IDLE renewal


# --- 4. exactly once -------------------------------------------------------------------------


def test_crash_before_the_journal_row_is_finished_writes_no_second_draft(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(imap_server, imap_user, sample(EVENTS))
    settings = imap_settings(imap_server, imap_user, tmp_path, smtp_server)
    crashes: list[int] = []
    real_finish = Journal.finish

    def finish_crashes_once(self: Journal, entry_id: int, **kwargs: Any) -> None:
        if not crashes:
            crashes.append(entry_id)  # the draft is saved and the forward sent by now
            raise RuntimeError("simulated crash before the journal row is finished")
        real_finish(self, entry_id, **kwargs)

    monkeypatch.setattr(Journal, "finish", finish_crashes_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_worker(settings).run_once()
    assert count(imap_server, imap_user, "Drafts") == 1
    assert len(smtp_server.received) == 1

    restarted = make_worker(settings)
    [entry] = list(restarted.journal)
    assert entry.status == "pending"
    [outcome] = restarted.run_once().outcomes

    assert "draft already in Drafts" in outcome.detail
    assert "already sent as" in outcome.detail
    assert count(imap_server, imap_user, "Drafts") == 1
    assert len(smtp_server.received) == 1
    assert count(imap_server, imap_user, "Sent") == 1
    [entry] = list(restarted.journal)
    assert entry.status == "done"


def test_a_crash_while_sending_resends_with_the_same_message_id(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The at-least-once window: the server said 250, the "sent" row was never committed.
    seed(imap_server, imap_user, sample(EVENTS))
    settings = imap_settings(imap_server, imap_user, tmp_path, smtp_server)

    def crash(self: Journal, queue_id: int) -> None:
        raise RuntimeError("simulated crash after the SMTP server's 250")

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "queue_sent", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            make_worker(settings).run_once()
    [first] = smtp_server.received

    restarted = make_worker(settings)
    [item] = restarted.journal.queue_entries()
    assert item.status == "sending"  # outcome unknown
    restarted.run_once()

    _, second = smtp_server.received
    assert message_id(second.content) == message_id(first.content)  # receivers can deduplicate
    assert second.content == first.content
    assert count(imap_server, imap_user, "Drafts") == 1
    assert count(imap_server, imap_user, "Sent") == 1
    restarted.run_once()
    assert len(smtp_server.received) == 2


def test_uidvalidity_change_does_not_handle_old_mail_again(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, make_worker: MakeWorker
) -> None:
    seed(imap_server, imap_user, sample(REPLY), sample(OTHER))
    settings = imap_settings(imap_server, imap_user, tmp_path, None)
    worker = make_worker(settings)
    worker.run_once()
    assert count(imap_server, imap_user, "Drafts") == 1
    with imap(imap_server, imap_user) as client:
        old = client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]

    imap_server.doveadm(
        "mailbox", "update", "-u", imap_user, "--uid-validity", str(old + 1000), "INBOX"
    )
    seed(imap_server, imap_user, sample(EVENTS))  # new mail after the change is still handled
    summary = make_worker(settings).run_once()

    actions = {o.uid: (o.decision.action, o.decision.reason) for o in summary.outcomes}
    assert [a for a, _ in actions.values()] == ["ignore", "ignore", "reply"]
    ignored = [reason for action, reason in actions.values() if action == "ignore"]
    assert all("already handled as journal entry" in reason for reason in ignored)
    assert count(imap_server, imap_user, "Drafts") == 2
    assert set(drafts_by_source(imap_server, imap_user)) == {
        message_id(sample(REPLY)),
        message_id(sample(EVENTS)),
    }


# --- 5. faults ---------------------------------------------------------------------------------


def test_dovecot_restarted_mid_run(
    own_server: LocalImapServer, tmp_path: Path, model: Any
) -> None:
    user = new_user("r")
    many = [with_message_id(sample(REPLY), f"<restart-{n}@example.test>") for n in range(400)]
    seed(own_server, user, *many)
    settings = imap_settings(own_server, user, tmp_path, None)

    with running(settings, model):
        assert wait_until(lambda: count(own_server, user, "Drafts") > 0, 30)
        own_server.restart()  # mid-pass: the worker is APPENDing drafts
        restarted = time.monotonic()
        assert wait_until(lambda: count(own_server, user, "Drafts") >= len(many), 60)
        caught_up = time.monotonic() - restarted
        late = with_message_id(sample(EVENTS), "<after-restart@example.test>")
        seed(own_server, user, late)
        assert wait_until(lambda: count(own_server, user, "Drafts") == len(many) + 1, 30)

    drafts = drafts_by_source(own_server, user)
    assert len(drafts) == len(many) + 1
    assert all(len(d) == 1 for d in drafts.values()), "a message got two drafts"
    assert "<after-restart@example.test>" in drafts
    entries = journal_entries(settings)
    assert len(entries) == len(many) + 1 and all(e.status == "done" for e in entries)
    print(f"\nDovecot restart: all {len(many)} drafts {caught_up:.1f} s after the restart")


class RecordingStop(threading.Event):
    """A stop event whose waits return at once: records the back-off pauses asked for."""

    def __init__(self, pauses: int) -> None:
        super().__init__()
        self.pauses: list[float] = []
        self._wanted = pauses

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None and timeout >= 0.5:  # back-off pauses (idle slices are shorter)
            self.pauses.append(timeout)
            if len(self.pauses) >= self._wanted:
                self.set()
        return self.is_set()


def test_reconnect_backoff_doubles_with_jitter_up_to_the_cap(
    own_server: LocalImapServer, tmp_path: Path, make_worker: MakeWorker
) -> None:
    settings = imap_settings(own_server, new_user("r"), tmp_path, None, idle_seconds=1.0)
    worker = make_worker(settings)
    stop = RecordingStop(pauses=9)
    gone = threading.Timer(1.0, own_server.stop)  # while the worker idles: refused from then on

    gone.start()
    try:
        worker.run_forever(stop)
    finally:
        gone.join()

    assert len(stop.pauses) == 9
    for attempt, pause in enumerate(stop.pauses):
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_START_SECONDS * 2**attempt)
        assert ceiling * 0.5 <= pause <= ceiling, (attempt, pause)
    assert max(stop.pauses) <= BACKOFF_CAP_SECONDS
    assert len(set(stop.pauses)) == len(stop.pauses)  # jitter: no two alike


def test_a_worker_that_cannot_start_says_so(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, make_worker: MakeWorker
) -> None:
    settings = imap_settings(imap_server, imap_user, tmp_path, None, imap_password="wrong")

    with pytest.raises(MailboxError, match="login failed"):
        make_worker(settings).run_forever(threading.Event())
