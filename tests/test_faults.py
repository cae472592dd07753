"""Server faults against the real servers (issue 7, items 2 and 3): Dovecot stopped for 30 s
mid-run; connections cut mid-command by a TCP proxy; SMTP turning mail away with 4xx; a
journal that cannot be written (read-only directory, a file where its directory should be, a
full disk); and mail above the size limit handed to a person without its body being read.

Nothing is mocked on the normal path. Failures no server produces on demand are made by real
means: a proxy that cuts sockets, a 421 greeting from a socket, the kernel's file size limit
(RLIMIT_FSIZE) for a full disk, and dropped capabilities so that root obeys a 0555 directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapserver import LocalImapServer, new_user
from smtpserver import LocalSmtpServer
from tcpproxy import TcpProxy
from test_crash import (
    HANDOFF_FLAGS,
    assert_exactly_once,
    corpus,
    folder_headers,
    journal_rows,
    journal_status,
    message_id_of,
    seed_many,
    triage_env,
)
from test_worker_imap import (
    EVENTS,
    OTHER,
    REPLY,
    build_worker,
    close,
    count,
    imap_settings,
    running,
    sample,
    seed,
    wait_until,
)

from triage import worker as worker_mod
from triage.errors import TriageError
from triage.imap import HEADER_FETCH_BYTES, ImapMailbox
from triage.journal import Journal
from triage.outbox import open_outbox
from triage.worker import Worker

# Issue 7: "Dovecot stopped for 30 s mid-run and started again".
OUTAGE_SECONDS = 30.0
# The worker's reconnect back-off (doubling from 1 s up to 60 s, tested in test_worker_imap.py)
# is capped lower in these tests, so that the worker is back within seconds of the server
# rather than up to a minute later: what is tested here is that nothing is lost or doubled.
TEST_BACKOFF_CAP_SECONDS = 1.0
# Connections cut by the proxy during a run of PROXY_MESSAGES: a FETCH reply cut in two, a
# MULTIAPPEND cut in two, then DROP_ALL_TIMES cuts of every connection while work remains, and
# REFUSE_SECONDS of connections refused.
PROXY_MESSAGES = 100
FETCH_CUT_BYTES = 40_000  # into the first FETCH of 100 bodies (~300 KB)
APPEND_CUT_BYTES = 60_000  # into the MULTIAPPEND of ~65 drafts (~350 KB)
DROP_ALL_TIMES = 3
REFUSE_SECONDS = 1.5
# A message with a 30 MB attachment (issue 7, item 3), and at most this much of the wire may be
# read while the worker handles it and two ordinary messages.
BIG_MESSAGE_BYTES = 30 * 1024 * 1024
READ_AT_MOST_BYTES = 1_000_000
# Bounds on waiting, so that a hang fails the test instead of stalling CI.
CATCH_UP_SECONDS = 60
RUN_SECONDS = 60

# linux/capability.h and linux/prctl.h: what lets root write where permissions say it may not,
# and what lets a process give that up for its children.
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER, _CAP_SETPCAP = 1, 2, 3, 8


# --- helpers -------------------------------------------------------------------------------------


class StoppableImapServer(LocalImapServer):
    """A Dovecot that can be stopped and started again later on the same directory and ports
    (``LocalImapServer.restart`` does both at once)."""

    def halt(self) -> None:
        self._kill()

    def resume(self) -> None:
        self._launch(retry_on_port_clash=False)


@pytest.fixture
def stoppable_server() -> Iterator[StoppableImapServer]:
    server = StoppableImapServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outbox_finished(state_db: Path) -> bool:
    """Every queued forward sent and its copy in Sent (copies failed in an outage come later)."""
    rows = journal_rows(state_db, "SELECT status, copied FROM outbox")
    return all(r["status"] == "sent" and r["copied"] == 1 for r in rows)


def run_triage_once(
    env: dict[str, str], cwd: Path, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """``triage run --once`` in a process of its own; output through pipes (a file size limit
    applies to files, not pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "triage", "run", "--once"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        **popen,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a failed run (and no traceback)."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().endswith(lines[0]), "the error is not the last word"
    return lines[0]


def untouched(host: str, port: int, user: str, smtp: LocalSmtpServer) -> None:
    """Nothing was written to the mailbox: no drafts, no flags, nothing sent or filed."""
    assert folder_headers(host, port, user, "Drafts", "Message-ID") == []
    assert folder_headers(host, port, user, "Sent", "Message-ID") == []
    assert all(
        flags == set() for _, flags, _ in folder_headers(host, port, user, "INBOX", "Message-ID")
    )
    assert smtp.received == []


def _drop_dac_capabilities() -> None:
    """preexec_fn: a root child loses the capabilities that override file permissions (from
    its bounding set, so the program it runs never has them), and obeys 0555 like anyone."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def _can_obey_permissions() -> bool:
    """Whether a child of this process is subject to file permissions: not root, or root
    allowed to drop capabilities (CAP_SETPCAP, which root has outside odd containers)."""
    if os.geteuid() != 0:
        return True
    status = Path("/proc/self/status").read_text()
    effective = int(
        next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff")), 16
    )
    return bool(effective >> _CAP_SETPCAP & 1)


def _file_size_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: no file may grow past ``limit`` bytes (RLIMIT_FSIZE): a full disk, for one
    process, without privileges. Writes past it fail with EFBIG (SQLite: "disk I/O error")."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


# --- 2a. Dovecot stopped for 30 s mid-run --------------------------------------------------------


@pytest.mark.slow
def test_dovecot_stopped_for_30_s_mid_run(
    stoppable_server: StoppableImapServer,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_mod, "BACKOFF_CAP_SECONDS", TEST_BACKOFF_CAP_SECONDS)
    server, user = stoppable_server, new_user("down")
    seeded = corpus(300, "down")
    seed_many(server.host, server.port, user, seeded)
    settings = imap_settings(server, user, tmp_path, smtp_server)
    state_db = settings.state_db

    with running(settings, model):
        assert wait_until(lambda: journal_status(state_db).total() > 0, 30)
        server.halt()  # mid-pass: the first intents are journalled, none is finished yet
        at_halt = journal_status(state_db)
        time.sleep(OUTAGE_SECONDS)
        server.resume()
        resumed = time.monotonic()
        late = corpus(1, "after-outage")[0]
        seed_many(server.host, server.port, user, [late])
        everything = len(seeded) + 1
        assert wait_until(lambda: journal_status(state_db)["done"] == everything, CATCH_UP_SECONDS)
        assert wait_until(lambda: outbox_finished(state_db), CATCH_UP_SECONDS)
        caught_up = time.monotonic() - resumed

    assert at_halt["done"] < len(seeded), f"the run was over before Dovecot stopped: {at_halt}"
    tally = assert_exactly_once(
        server.host, server.port, user, state_db, [*seeded, late], smtp_server
    )
    print(
        f"\nDovecot down {OUTAGE_SECONDS:.0f} s: {at_halt['done']} done and {at_halt['pending']} "
        f"pending when it stopped; all {everything} done {caught_up:.1f} s after it came back; "
        f"{tally.drafts} drafts, {tally.forwards} forwards, {tally.resent} sent twice"
    )


# --- 2b. connections cut mid-command ---------------------------------------------------------------


@pytest.mark.slow
def test_connections_cut_mid_command_lose_and_double_nothing(
    imap_server: LocalImapServer,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_mod, "BACKOFF_CAP_SECONDS", TEST_BACKOFF_CAP_SECONDS)
    user = new_user("cut")
    seeded = corpus(PROXY_MESSAGES, "cut")
    seed_many(imap_server.host, imap_server.port, user, seeded)
    rng = random.Random(7)
    cuts: list[str] = []

    with TcpProxy(imap_server.host, imap_server.port) as proxy:
        settings = imap_settings(proxy, user, tmp_path, smtp_server)  # the worker sees the proxy
        state_db = settings.state_db

        def working() -> bool:
            return journal_status(state_db)["done"] < len(seeded)

        def traffic() -> int:
            return proxy.bytes_up + proxy.bytes_down

        proxy.cut_after(FETCH_CUT_BYTES, "down")
        with running(settings, model):
            assert wait_until(lambda: not proxy.cut_pending, 30), "no reply was cut"
            proxy.cut_after(APPEND_CUT_BYTES, "up")
            assert wait_until(lambda: not proxy.cut_pending, 30), "no command was cut"
            fetch_cut, append_cut = proxy.cut_log[:2]
            cuts += [f"{fetch_cut} (mid-reply)", f"{append_cut} (mid-command)"]
            for _ in range(DROP_ALL_TIMES):  # each once the worker is back at work
                before = traffic()
                if not working() or not wait_until(lambda b=before: traffic() > b, 10):
                    break
                time.sleep(rng.uniform(0.02, 0.2))
                if proxy.drop_all():
                    cuts.append(f"every connection at {journal_status(state_db)['done']} done")
            proxy.refuse()
            time.sleep(REFUSE_SECONDS)
            proxy.start()
            assert wait_until(lambda: not working(), CATCH_UP_SECONDS)
            assert wait_until(lambda: outbox_finished(state_db), CATCH_UP_SECONDS)
        connections, drops = proxy.connections, proxy.drops

    assert (fetch_cut, append_cut) == ("UID FETCH", "APPEND"), cuts  # MULTIAPPEND is an APPEND
    assert drops >= 3 and len(cuts) >= 3, cuts
    tally = assert_exactly_once(
        imap_server.host, imap_server.port, user, state_db, seeded, smtp_server
    )
    print(
        f"\nproxy: cut {', '.join(cuts)}; {drops} connections cut, {connections} opened; "
        f"{tally.drafts} drafts, {tally.forwards} forwards, {tally.resent} sent twice"
    )


# --- 2c. SMTP saying 4xx: queued, tried again, sent once ---------------------------------------
# 451 to DATA, 550/554 to DATA (hand-off), a refused connection and TLS are in
# test_worker_imap.py and test_outbox.py. What was missing: 421 as the greeting, 450 to RCPT,
# and 421 to DATA (the server closes the connection).


class Greets421:
    """An SMTP server that is up but turns everyone away: 421 as its greeting, then closes."""

    greeting = b"421 4.3.2 Service not available, closing transmission channel\r\n"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.greeted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="smtp-421")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(self.greeting)
                self.greeted += 1

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("fault", ["421-greeting", "450-to-rcpt", "421-to-data"])
def test_smtp_4xx_queues_the_forward_and_sends_it_once_later(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, model: Any, fault: str
) -> None:
    seed(imap_server, imap_user, sample(EVENTS))
    busy = Greets421() if fault == "421-greeting" else None
    smtp = LocalSmtpServer()
    if busy is not None:
        smtp.port = busy.port  # the real server takes the port over once the busy one is gone
    else:
        smtp.start()
        if fault == "450-to-rcpt":
            smtp.handler.rcpt_answers = ["450 4.2.1 Mailbox busy, try again later"]
        else:
            smtp.handler.answers = ["421 4.7.0 Try again later, closing connection"]
    worker = build_worker(imap_settings(imap_server, imap_user, tmp_path, smtp), model)
    try:
        [outcome] = worker.run_once().outcomes
        code = fault[:3]
        assert outcome.status == "done"
        assert "forward to delivery-partners@ect.example.org queued" in outcome.detail
        assert code in outcome.detail
        [item] = worker.journal.queue_entries()
        assert (item.status, item.attempts) == ("queued", 1)
        assert count(imap_server, imap_user, "Drafts") == 1  # the rest of the work is done
        [(_, flags, _)] = folder_headers(
            imap_server.host, imap_server.port, imap_user, "INBOX", "Message-ID"
        )
        assert flags == {b"$Triaged"}  # a 4xx is no reason for a person to take over

        if busy is not None:
            assert busy.greeted == 1
            busy.stop()
            smtp.start()
        summary = worker.run_once()
        worker.run_once()
        restarted = build_worker(worker.settings, model)  # sends nothing more either
        try:
            restarted.run_once()
        finally:
            close(restarted)
    finally:
        close(worker)
        smtp.stop()
    assert [d.status for d in summary.deliveries] == ["sent"]
    [received] = smtp.received
    assert received.message["Message-ID"] == item.message_id  # the same message, tried again
    assert count(imap_server, imap_user, "Sent") == 1


# --- 2d. a journal that cannot be written ----------------------------------------------------------


def _state(
    tmp_path: Path, imap_server: LocalImapServer, user: str, smtp: LocalSmtpServer
) -> tuple[Path, dict[str, str]]:
    """A journal made by a first ``run --once`` on an empty INBOX (a worker that has run
    before), then three messages to handle: a reply with a forward, a reply, a hand-off."""
    state_db = tmp_path / "state" / "triage.sqlite3"
    env = triage_env(imap_server.host, imap_server.port, user, state_db, smtp)
    first = run_triage_once(env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in state_db.parent.iterdir()) == ["triage.sqlite3"]
    seed(imap_server, user, sample(EVENTS), sample(REPLY), sample(OTHER))
    return state_db, env


@pytest.mark.skipif(not _can_obey_permissions(), reason="root without CAP_SETPCAP ignores 0555")
def test_read_only_journal_directory(
    imap_server: LocalImapServer, imap_user: str, smtp_server: LocalSmtpServer, tmp_path: Path
) -> None:
    state_db, env = _state(tmp_path, imap_server, imap_user, smtp_server)
    state_db.parent.chmod(0o555)
    try:
        result = run_triage_once(env, tmp_path, preexec_fn=_drop_dac_capabilities)
    finally:
        state_db.parent.chmod(0o755)

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"error: {state_db}: cannot open the journal (attempt to write a readonly database); "
        "check TRIAGE_STATE_DB, that its directory is writable and that its disk has free space"
    )
    untouched(imap_server.host, imap_server.port, imap_user, smtp_server)


def test_journal_directory_that_is_a_file(
    imap_server: LocalImapServer, imap_user: str, smtp_server: LocalSmtpServer, tmp_path: Path
) -> None:
    # Root writes into a 0555 directory (without the test above's dropped capabilities): a file
    # where the directory should be stops root too.
    seed(imap_server, imap_user, sample(EVENTS), sample(REPLY), sample(OTHER))
    blocker = tmp_path / "state"
    blocker.write_text("not a directory\n")
    state_db = blocker / "triage.sqlite3"
    env = triage_env(imap_server.host, imap_server.port, imap_user, state_db, smtp_server)

    result = run_triage_once(env, tmp_path)

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"error: {state_db}: cannot open the journal ({blocker} is a file, not a directory); "
        "check TRIAGE_STATE_DB, that its directory is writable and that its disk has free space"
    )
    untouched(imap_server.host, imap_server.port, imap_user, smtp_server)


def test_full_disk(
    imap_server: LocalImapServer, imap_user: str, smtp_server: LocalSmtpServer, tmp_path: Path
) -> None:
    state_db, env = _state(tmp_path, imap_server, imap_user, smtp_server)

    result = run_triage_once(env, tmp_path, preexec_fn=_file_size_limit(0))

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"error: {state_db}: cannot open the journal (disk I/O error); check TRIAGE_STATE_DB, "
        "that its directory is writable and that its disk has free space"
    )
    untouched(imap_server.host, imap_server.port, imap_user, smtp_server)


# Where the disk fills, as file size limits: with the first intents journalled (nothing written to
# the mailbox yet), and after the first batch's drafts were saved and its forwards sent, before
# their outcomes were journalled (55 drafts and 100 intents pending when this was written: a
# journalled intent costs ~17 KB of SQLite's write-ahead log).
@pytest.mark.slow
@pytest.mark.parametrize("limit", [40_000, 1_800_000], ids=["40KB", "1.8MB"])
def test_disk_filling_up_mid_run_leaves_no_partial_state(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    limit: int,
) -> None:
    seeded = corpus(100, f"full-{limit}")
    state_db = tmp_path / "state" / "triage.sqlite3"
    env = triage_env(imap_server.host, imap_server.port, imap_user, state_db, smtp_server)
    assert run_triage_once(env, tmp_path).returncode == 0  # the journal exists, as in service
    seed_many(imap_server.host, imap_server.port, imap_user, seeded)

    full = run_triage_once(env, tmp_path, preexec_fn=_file_size_limit(limit))

    assert full.returncode == 1, full.stdout + full.stderr
    assert error_line(full) == (
        f"error: {state_db}: cannot write the journal (disk I/O error); check that its "
        "directory is writable and that its disk has free space, then run triage again (a "
        "message whose outcome is not journalled is looked at again)"
    )
    stopped_at = journal_status(state_db)
    assert stopped_at["pending"] > 0 and stopped_at["done"] < len(seeded)
    drafts_then = count(imap_server, imap_user, "Drafts")
    if limit < 100_000:
        untouched(imap_server.host, imap_server.port, imap_user, smtp_server)

    again = run_triage_once(env, tmp_path)  # space again

    assert again.returncode == 0, again.stderr
    tally = assert_exactly_once(
        imap_server.host, imap_server.port, imap_user, state_db, seeded, smtp_server
    )
    print(
        f"\nfile size limit {limit}: stopped with {dict(stopped_at)} and {drafts_then} drafts; "
        f"then {tally.drafts} drafts, {tally.forwards} forwards, {tally.resent} sent twice"
    )


def test_a_journal_full_in_the_middle_of_a_message_leaves_it_pending(
    imap_server: LocalImapServer,
    imap_user: str,
    smtp_server: LocalSmtpServer,
    tmp_path: Path,
    model: Any,
) -> None:
    # SQLite's own limit on the journal's size (PRAGMA max_page_count, on the worker's
    # connection) makes it full in-process: the intent fits in the pages there are, the
    # forward's queue row does not (it carries the original, which Exchange's headers make
    # larger than a page). That is no fault of the message: the pass stops, and the entry
    # stays pending for the next run instead of being journalled "failed" and never retried.
    exchange = "".join(
        f"X-MS-Exchange-Organization-Test{n}: {'0123456789abcdef' * 5}\r\n" for n in range(40)
    ).encode()
    original = exchange + sample(EVENTS)
    seed(imap_server, imap_user, original)
    settings = imap_settings(imap_server, imap_user, tmp_path, smtp_server)
    worker = build_worker(settings, model)
    try:
        pages = worker.journal.db.execute("PRAGMA page_count").fetchone()[0]
        worker.journal.db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(TriageError) as caught:
            worker.run_once()
    finally:
        close(worker)
    assert str(caught.value) == (
        f"{settings.state_db}: cannot write the journal (database or disk is full); check "
        "that its directory is writable and that its disk has free space, then run triage "
        "again (a message whose outcome is not journalled is looked at again)"
    )
    assert journal_status(settings.state_db) == {"pending": 1}
    assert count(imap_server, imap_user, "Drafts") == 1  # written before the forward was queued
    assert smtp_server.received == []

    restarted = build_worker(settings, model)
    try:
        [outcome] = restarted.run_once().outcomes
    finally:
        close(restarted)

    assert outcome.status == "done" and "draft already in Drafts" in outcome.detail
    assert_exactly_once(
        imap_server.host,
        imap_server.port,
        imap_user,
        settings.state_db,
        [original],
        smtp_server,
    )


# --- 3. mail above the size limit: handed off without its body -------------------------------------


def big_message(size: int, message_id: str) -> bytes:
    """A teacher's question with a scanned PDF attached: ``size`` bytes on the wire."""
    head = (
        "From: Priya Shah <priya.shah@oakfield.sch.uk>\r\n"
        "To: support@ect.example.org\r\n"
        "Subject: Evidence for my induction (scans attached)\r\n"
        f"Message-ID: {message_id}\r\n"
        "Date: Mon, 3 Mar 2025 09:12:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="scan"\r\n'
        "\r\n"
        "--scan\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Hello, my evidence is attached. How do I log in to MyECT to upload it?\r\n"
        "--scan\r\n"
        'Content-Type: application/pdf; name="evidence.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="evidence.pdf"\r\n'
        "\r\n"
    ).encode()
    tail = b"--scan--\r\n"
    line = b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n"
    lines, rest = divmod(size - len(head) - len(tail), len(line))
    return head + line * lines + b"A" * max(0, rest - 2) + b"\r\n" * (rest >= 2) + tail


def server_sizes(server: LocalImapServer, user: str) -> dict[int, int]:
    with IMAPClient(server.host, server.port, ssl=False, timeout=30) as client:
        client.login(user, "secret")
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        return {uid: d[b"RFC822.SIZE"] for uid, d in client.fetch(uids, ["RFC822.SIZE"]).items()}


def test_mail_above_the_size_limit_is_handed_off_without_reading_its_body(
    imap_server: LocalImapServer, imap_user: str, tmp_path: Path, model: Any
) -> None:
    big = big_message(BIG_MESSAGE_BYTES, "<evidence-scan@oakfield.sch.uk>")
    seed(imap_server, imap_user, sample(REPLY), big, sample(OTHER))
    size = server_sizes(imap_server, imap_user)[2]
    assert size == len(big) > 30_000_000

    with TcpProxy(imap_server.host, imap_server.port) as proxy:  # counts what the worker reads
        settings = imap_settings(proxy, imap_user, tmp_path, None)
        mailbox = ImapMailbox(
            proxy.host,
            proxy.port,
            imap_user,
            "secret",
            tls="none",
            max_message_bytes=settings.max_message_bytes,
        )
        worker = Worker(
            settings,
            mailbox=mailbox,
            outbox=open_outbox(settings),
            model=model,
            journal=Journal(settings.state_db),
        )
        try:
            summary = worker.run_once()
            entries = {e.uid: e for e in worker.journal}
        finally:
            close(worker)
        read = proxy.bytes_down

    outcomes = {o.uid: o for o in summary.outcomes}
    assert [outcomes[uid].decision.action for uid in ("1", "2", "3")] == ["reply", "human", "human"]
    assert outcomes["2"].decision.reason == f"too large to read automatically ({size} bytes)"
    assert outcomes["2"].detail == "flagged for a human"
    big_entry = entries["2"]
    assert (big_entry.status, big_entry.action) == ("done", "human")
    assert big_entry.message_id == "<evidence-scan@oakfield.sch.uk>"
    assert big_entry.sender == "priya.shah@oakfield.sch.uk"
    assert big_entry.subject == "Evidence for my induction (scans attached)"
    flags = {
        uid: f
        for uid, f, _ in folder_headers(
            imap_server.host, imap_server.port, imap_user, "INBOX", "Message-ID"
        )
    }
    assert flags[2] == HANDOFF_FLAGS and flags[1] == {b"$Triaged"}
    assert count(imap_server, imap_user, "Drafts") == 1
    assert read < READ_AT_MOST_BYTES, f"the worker read {read} bytes for a {size}-byte message"
    print(f"\nsize limit: a {size}-byte message handed off; the worker read {read} bytes in all")


def test_fetch_reads_only_the_header_of_mail_above_the_limit(
    imap_server: LocalImapServer, imap_user: str
) -> None:
    small = sample(REPLY)
    seed(imap_server, imap_user, small, small + b"x")
    exact = server_sizes(imap_server, imap_user)[1]
    huge_header = b"X-Padding: " + b"p" * (2 * HEADER_FETCH_BYTES) + b"\r\n" + small
    seed(imap_server, imap_user, huge_header)

    with ImapMailbox(
        imap_server.host, imap_server.port, imap_user, "secret", tls="none", max_message_bytes=exact
    ) as mailbox:
        whole, over, padded = mailbox.fetch(["1", "2", "3"])
    with ImapMailbox(
        imap_server.host, imap_server.port, imap_user, "secret", tls="none"
    ) as mailbox:
        stored = list(mailbox.fetch(["1", "2"]))  # no limit (the default): whole messages

    assert [m.truncated for m in stored] == [False, False]
    assert (whole.truncated, whole.size, whole.raw) == (False, exact, stored[0].raw)
    assert (over.truncated, over.size) == (True, exact + 1)
    header = stored[1].raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert over.raw == header  # the header, and not a byte of the body
    assert message_id_of(over.raw) == message_id_of(small)
    assert padded.truncated and len(padded.raw) == HEADER_FETCH_BYTES  # never more than this
