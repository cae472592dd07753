"""IMAP throughput: ``triage run --once`` against the I/O ceiling of the same Dovecot, in one run.

    python benchmarks/imap_throughput.py [--messages 2000] [--profile]

Starts its own Dovecot on loopback (tests/imapserver.py; needs dovecot-imapd 2.3 and root, as
the tests do), seeds two fresh users with the same N realistic messages (samples/inbox, cycled,
each with its own Message-ID) by MULTIAPPEND, then measures:

  (a) the I/O ceiling: plain imapclient on one connection, fetching every message with
      BODY.PEEK[] (in UID FETCH batches of 100, as the worker does) and APPENDing one
      reply-sized (~3 KB) message per message to Drafts; no parsing, no classifying: the least
      work any worker must do;
  (b) the worker: ``Worker.run_once()`` wired as ``triage run --once`` wires it (the committed
      model, the IMAP mailbox, the local outbox folder for forwards, a fresh journal), in a
      child process of its own so that its peak RSS (getrusage ru_maxrss) is its own.

It prints messages/s for both, their ratio (target: at least 0.5) and the worker's peak memory.
The machine is rarely quiet, so (a) and (b) alternate ``--repeat`` times (3) on fresh users and
the medians are compared. Two more lines explain the gap: (a') the same I/O batched as the
worker batches it (one MULTIAPPEND and one STORE per 100 messages), and (c) the worker's CPU
alone (parse, classify, render, serialise the same messages, no server at all).
``--profile`` runs (b) once under cProfile and prints the most expensive functions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from imapclient import IMAPClient  # noqa: E402
from imapserver import PASSWORD, LocalImapServer, new_user  # noqa: E402

SAMPLES = ROOT / "samples" / "inbox"
# UIDs per FETCH in the ceiling: the worker's batch (triage.imap.FETCH_BATCH).
FETCH_BATCH = 100
# Messages per MULTIAPPEND when seeding (recipe: ~10,500 msg/s in chunks of 100).
SEED_CHUNK = 100
# A reply-sized draft: what the worker's drafts weigh (text and HTML parts, quoted original).
REPLY_BYTES = 3000


def realistic_messages(count: int) -> list[bytes]:
    """``count`` messages cycled from samples/inbox, each with a Message-ID of its own."""
    samples = [p.read_bytes() for p in sorted(SAMPLES.glob("*.eml"))]
    out = []
    for n in range(count):
        raw = samples[n % len(samples)]
        new_id = f"Message-ID: <bench-{n}@bench.example.test>".encode()
        raw, found = re.subn(rb"(?im)^Message-ID:[^\n]*$", new_id, raw, count=1)
        if not found:
            raw = new_id + b"\n" + raw
        out.append(raw)
    return out


def seed(server: LocalImapServer, user: str, messages: list[bytes]) -> float:
    started = time.perf_counter()
    with IMAPClient(server.host, server.port, ssl=False, timeout=60) as client:
        client.login(user, PASSWORD)
        for start in range(0, len(messages), SEED_CHUNK):
            client.multiappend("INBOX", messages[start : start + SEED_CHUNK])
    return time.perf_counter() - started


def reply_sized(n: int) -> bytes:
    head = (
        "From: ECT Support Team <support@ect.example.org>\r\n"
        "To: someone@example.test\r\n"
        f"Subject: Re: question {n}\r\n"
        f"Message-ID: <draft-{n}@ect.example.org>\r\n"
        f"In-Reply-To: <bench-{n}@bench.example.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Thank you for your email. Here is the answer to your question.\r\n"
    body = line * ((REPLY_BYTES - len(head)) // len(line) + 1)
    return head + body[: REPLY_BYTES - len(head)]


def io_ceiling(server: LocalImapServer, user: str) -> tuple[int, float]:
    """(messages, seconds): fetch each with BODY.PEEK[], APPEND one reply-sized draft each."""
    with IMAPClient(server.host, server.port, ssl=False, timeout=60) as client:
        client.login(user, PASSWORD)
        started = time.perf_counter()
        client.select_folder("INBOX")
        uids = sorted(client.search(["UNDELETED"]))
        handled = 0
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            fetched = client.fetch(batch, [b"BODY.PEEK[]"])
            for uid in batch:
                if fetched[uid][b"BODY[]"]:
                    client.append("Drafts", reply_sized(uid), flags=[b"\\Draft", b"\\Seen"])
                    handled += 1
        return handled, time.perf_counter() - started


def batched_io(server: LocalImapServer, user: str) -> tuple[int, float]:
    """(messages, seconds): the same I/O as the ceiling, batched as the worker batches it."""
    with IMAPClient(server.host, server.port, ssl=False, timeout=60) as client:
        client.login(user, PASSWORD)
        started = time.perf_counter()
        client.select_folder("INBOX")
        uids = sorted(client.search(["UNDELETED"]))
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            client.fetch(batch, [b"BODY.PEEK[]"])
            drafts = [{"msg": reply_sized(uid), "flags": [b"\\Draft", b"\\Seen"]} for uid in batch]
            client.multiappend("Drafts", drafts)
            client.add_flags(batch, [b"$Triaged"])
        return len(uids), time.perf_counter() - started


def cpu_alone(worker: Any, raws: list[bytes]) -> float:
    """Seconds the worker's own stages take on ``raws`` without any server: decide (parse and
    classify in batches), render, and serialise what would be written."""
    from triage.mailbox import Incoming
    from triage.outbox import as_bytes

    started = time.perf_counter()
    for start in range(0, len(raws), FETCH_BATCH):
        chunk = raws[start : start + FETCH_BATCH]
        batch = [Incoming("INBOX", 1, str(n), raw) for n, raw in enumerate(chunk)]
        for incoming, (query, decision) in zip(batch, worker.decide_many(batch), strict=True):
            rendered = worker.composer.render(decision, query, raw=incoming.raw)
            written = [rendered.reply] if rendered.reply is not None else []
            for message in [*written, *rendered.forwards]:
                as_bytes(message)
    return time.perf_counter() - started


def worker_phase(args: argparse.Namespace) -> None:
    """In the child process: build the worker as ``triage run --once`` does and time one pass."""
    from triage import classifier
    from triage.cli import open_mailbox
    from triage.config import load_settings
    from triage.journal import Journal
    from triage.outbox import open_outbox
    from triage.worker import Worker

    work = Path(args.workdir)
    settings = load_settings(
        _env_file=None,
        imap_host="127.0.0.1",
        imap_port=args.port,
        imap_tls="none",
        imap_user=args.user,
        imap_password=PASSWORD,
        state_db=work / "triage.sqlite3",
        model_path=ROOT / "models" / "triage.joblib",
        replies_dir=ROOT / "replies",
        maildir=work / "mail",
    )
    loading = time.perf_counter()
    model = classifier.load(settings.model_path)
    loaded = time.perf_counter() - loading
    mailbox = open_mailbox(settings)
    journal = Journal(settings.state_db)
    worker = Worker(
        settings, mailbox=mailbox, outbox=open_outbox(settings), model=model, journal=journal
    )
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    summary = worker.run_once()
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    cpu_seconds = cpu_alone(worker, realistic_messages(args.messages))
    mailbox.close()
    journal.close()
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print(
        json.dumps(
            {
                "messages": len(summary.outcomes),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "load_seconds": loaded,
                "failed": len(summary.failed),
                "actions": dict(summary.actions),
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def run_worker(
    server: LocalImapServer, user: str, work: str, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker-phase", "--port", str(server.port),
        "--user", user, "--workdir", work, "--messages", str(args.messages),
    ] + (["--profile"] if args.profile else [])  # fmt: skip
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"worker phase failed:\n{child.stderr}")
    if args.profile:
        print(child.stderr)
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per user (2000)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--profile", action="store_true", help="profile the worker (cProfile)")
    parser.add_argument("--worker-phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_phase:
        worker_phase(args)
        return 0
    if args.profile:
        args.repeat = 1

    messages = realistic_messages(args.messages)
    size = sum(map(len, messages)) / len(messages)
    print(f"{len(messages)} messages from {SAMPLES.relative_to(ROOT)}/, {size:,.0f} bytes each")
    load, python = os.getloadavg()[0], sys.version.split()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f}, Python {python}")
    ceilings: list[float] = []
    rates: list[float] = []
    batched: list[float] = []
    cpu: list[float] = []
    peak = 0
    with LocalImapServer() as server:
        print(f"Dovecot {server.version} on 127.0.0.1:{server.port}")
        for round_ in range(1, args.repeat + 1):
            users = [new_user(name) for name in ("ceiling", "batched", "worker")]
            for user in users:
                seed(server, user, messages)
            handled, seconds = io_ceiling(server, users[0])
            ceilings.append(handled / seconds)
            handled, seconds = batched_io(server, users[1])
            batched.append(handled / seconds)
            with tempfile.TemporaryDirectory(prefix="bench") as work:
                result = run_worker(server, users[2], work, args)
            rates.append(result["messages"] / result["seconds"])
            cpu.append(len(messages) / result["cpu_seconds"])
            peak = max(peak, result["maxrss_kib"])
            actions = ", ".join(f"{a} {n}" for a, n in sorted(result["actions"].items()))
            drafts = server.doveadm("mailbox", "status", "-u", users[2], "messages", "Drafts")
            print(
                f"round {round_}: (a) ceiling {ceilings[-1]:,.0f}/s, "
                f"(b) worker {rates[-1]:,.0f}/s "
                f"[{result['messages']} handled: {actions}; {result['failed']} failed; "
                f"{drafts.split()[-1].replace('messages=', '')} drafts], "
                f"(a') batched I/O {batched[-1]:,.0f}/s, (c) worker CPU alone {cpu[-1]:,.0f}/s"
            )
    ceiling, rate = statistics.median(ceilings), statistics.median(rates)
    print()
    print(f"(a)  I/O ceiling, BODY.PEEK[] + one APPEND per message: {ceiling:8,.0f} messages/s")
    print(f"(b)  worker run_once (triage run --once):              {rate:8,.0f} messages/s")
    print(f"     ratio (b) / (a): {rate / ceiling:.2f} (target >= 0.50)")
    print(f"     worker peak memory (ru_maxrss): {peak / 1024:,.0f} MiB")
    print(
        f"(a') the same I/O batched as the worker does it:      "
        f"{statistics.median(batched):8,.0f} messages/s"
    )
    print(
        f"(c)  the worker's CPU alone, no server:                "
        f"{statistics.median(cpu):8,.0f} messages/s"
    )
    print(f"medians of {args.repeat} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
