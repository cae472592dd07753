"""The one entry point, ``triage``: run, classify, train, evaluate, and the operator's tools."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from email.parser import BytesHeaderParser
from pathlib import Path
from types import FrameType
from typing import Any

from triage import __version__, classifier, evaluation
from triage.config import Settings, load_settings
from triage.errors import ConfigError, MailboxError, ModelError, SampleError, TriageError
from triage.journal import Journal
from triage.mailbox import Mailbox
from triage.maildir import DRAFTS, LocalMailbox
from triage.outbox import open_outbox
from triage.query import Query, from_text, parse
from triage.routing import Router

log = logging.getLogger("triage")


def open_mailbox(settings: Settings) -> Mailbox:
    """IMAP when TRIAGE_IMAP_HOST is set, else the local Maildir."""
    if not settings.imap_host:
        return LocalMailbox(settings.maildir, folder=settings.imap_folder)
    from triage.imap import ImapMailbox

    assert settings.imap_user is not None and settings.imap_password is not None
    return ImapMailbox(
        settings.imap_host,
        settings.imap_effective_port,
        settings.imap_user,
        settings.imap_password.get_secret_value(),
        tls=settings.imap_tls,
        ca_file=settings.imap_ca_file,
        folder=settings.imap_folder,
        drafts_folder=settings.imap_drafts_folder,
        idle_seconds=settings.idle_seconds,
        poll_seconds=settings.poll_seconds,
        max_message_bytes=settings.max_message_bytes,
    )


def _drafts_at(settings: Settings) -> str:
    if settings.imap_host:
        return f"the Drafts folder of {settings.imap_user} on {settings.imap_host}"
    return (
        f"{settings.maildir / ('.' + DRAFTS)}/ (open it with any mail program that reads Maildir)"
    )


def _outbox_at(settings: Settings) -> str:
    if settings.smtp_host:
        return f"smtp {settings.smtp_host} (a copy in Sent)"
    return f"{settings.maildir / '.Outbox'}/new/ (the local outbox stands in for SMTP)"


def _handoffs_at(settings: Settings) -> str:
    where = settings.imap_handoff_folder
    if settings.imap_host:
        return f"flagged in {settings.imap_folder}" + (f" and moved to {where}" if where else "")
    return f"flagged (F) in {settings.maildir}/cur/" + (f" and moved to .{where}" if where else "")


# --- run
def _connect(mailbox: Mailbox) -> None:
    """Open the IMAP connection now: a wrong password, unknown host, refused port or untrusted
    certificate is a configuration problem (exit status 2), not something to retry forever."""
    connect = getattr(mailbox, "connect", None)
    if connect is None:
        return
    try:
        connect()
    except MailboxError as exc:
        raise ConfigError(str(exc)) from exc


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from triage.worker import Worker  # and the composer, Jinja2: not needed to classify

    model = classifier.load(settings.model_path)
    mailbox = open_mailbox(settings)
    _connect(mailbox)
    journal = Journal(settings.state_db, readonly=args.dry_run)
    worker = Worker(
        settings,
        mailbox=mailbox,
        outbox=open_outbox(settings),
        model=model,
        journal=journal,
        dry_run=args.dry_run,
    )
    try:
        if args.once:
            started = time.perf_counter()
            summary = worker.run_once()
            elapsed = time.perf_counter() - started
            if args.dry_run:
                for outcome in summary.outcomes:
                    print(f"uid {outcome.uid}: {outcome.decision.action}: {outcome.detail}")
                print("dry run: nothing was written")
            lines = summary.lines(
                drafts_at=_drafts_at(settings),
                outbox_at=_outbox_at(settings),
                handoffs_at=_handoffs_at(settings),
            )
            for line in lines:
                print(line)
            print(f"  took {elapsed:.2f} s ({mailbox.description})")
            return 1 if summary.failed else 0
        stop = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current message, then stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("watching %s (mode %s)", mailbox.description, settings.mode)
        worker.run_forever(stop)
        return 0
    finally:
        mailbox.close()
        journal.close()


# --- classify
def _message_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():  # a Maildir folder
            for sub in ("new", "cur"):
                if (path / sub).is_dir():
                    yield from sorted(p for p in (path / sub).iterdir() if p.is_file())
        else:
            yield from sorted(path.rglob("*.eml"))
    else:
        raise SampleError(f"{path}: no such file or directory")


def _cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    model = classifier.load(settings.model_path)
    router = Router.from_settings(settings)
    items: list[tuple[str, Query | None, str]] = []
    for text in args.text or ():
        items.append(("--text", from_text(text), ""))
    for path in args.paths:
        for file in _message_files(path):
            try:
                raw = file.read_bytes()
            except OSError as exc:
                items.append((str(file), None, f"cannot be read: {exc.strerror}"))
                continue
            items.append((str(file), parse(raw, support_address=settings.support_address), ""))
    if not items:
        raise ConfigError("nothing to classify: give .eml files, directories, a Maildir or --text")
    for source, query, problem in items:
        record: dict[str, Any]
        if query is None:
            record = {
                "source": source,
                "message_id": None,
                "topic": None,
                "topics": [],
                "confidence": 0.0,
                "action": "human",
                "reason": problem,
                "text": "",
            }
        else:
            unreadable = query.automatic or query.problem
            result = None if unreadable else model.classify(query, explain=args.explain)
            decision = router.route(query, result)
            record = {
                "source": source,
                "message_id": query.message_id or None,
                "topic": None
                if decision.action == "ignore"
                else (decision.topics[0] if decision.topics else "other"),
                "topics": list(decision.topics),
                "confidence": round(result.confidence, 4) if result else 0.0,
                "action": decision.action,
                "reason": decision.reason,
                "text": query.text,
            }
            if args.explain and result is not None:
                record["terms"] = list(result.terms)
                record["scores"] = {
                    k: round(v, 4)
                    for k, v in sorted(result.scores.items(), key=lambda kv: -kv[1])[:3]
                }
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            topics = ",".join(record["topics"]) or record["topic"] or "-"
            confidence = record["confidence"]
            line = f"{source}: {record['action']} {topics} ({confidence:.2f}) {record['reason']}"
            if args.explain and "terms" in record:
                line += f"\n  deciding terms: {', '.join(record['terms']) or '-'}"
            print(line)
    return 0


# --- train and evaluate
def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from triage import learning, training  # scikit-learn: imported only to train

    examples = training.load_data(settings.training_dir)
    trained_on, held_out = learning.gate_split(examples)  # held-out corrections: never trained on
    if args.samples:
        held_out += learning.held_out_emails(args.samples, support_address=settings.support_address)
    print(
        f"training on {len(trained_on)} of {len(examples)} examples from "
        f"{settings.training_dir}/ ({len(held_out)} held out for the gate)",
        file=sys.stderr,
    )
    result = training.train(
        trained_on,
        seed=args.seed,
        fillers=training.load_fillers(settings.training_dir),
        progress=lambda msg: print(f"  {msg}", file=sys.stderr),
    )
    model = result.model
    title = (
        f"cross-validation ({training.FOLDS} folds) on the training data; "
        f"thresholds: confidence {model.threshold:.3f}, margin {model.margin:.2f}"
    )
    for line in evaluation.report_lines(result.scores, title=title):
        print(line)
    if args.samples and args.samples.is_dir():
        cases = evaluation.collect([args.samples])
        scores = evaluation.score(
            evaluation.run(cases, model, Router.from_settings(settings), settings)
        )
        print()
        for line in evaluation.report_lines(scores, title=f"held-out emails in {args.samples}/"):
            print(line)
        model.card["held_out"] = {
            "path": str(args.samples),
            "macro_f1": round(scores.macro_f1, 4),
            "reply_precision": round(scores.reply_precision, 4),
            "coverage": round(scores.coverage, 4),
            **{k: round(v, 4) for k, v in scores.extra.items()},
        }
    model.card["gate"] = learning.card_entry(trained_on, held_out)
    installed = None
    if settings.model_path.exists():
        try:
            installed = classifier.load(settings.model_path)
        except ModelError as exc:
            print(f"the installed model is not compared: {exc}", file=sys.stderr)
    print()
    if held_out:
        lines, accept = learning.compare(model, installed, held_out)
    else:
        lines, accept = ["no held-out data (no samples, no corrections): the gate is skipped"], True
    for line in lines:
        print(line)
    if not accept:
        if not args.force:
            raise ModelError(
                f"{settings.model_path}: kept the installed model, the new one is worse on the "
                "held-out data; fix the training data, or run 'triage train --force' to install it"
            )
        print("installing it anyway (--force)")
    classifier.save(model, settings.model_path)
    card = training.write_card(model, settings.model_path)
    print(f"\nwrote {settings.model_path} and {card} in {result.seconds:.1f} s")
    return 0


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    model = classifier.load(settings.model_path)
    cases = evaluation.collect(args.paths or [Path("samples/inbox")])
    results = evaluation.run(cases, model, Router.from_settings(settings), settings)
    scores = evaluation.score(results)
    for line in evaluation.report_lines(
        scores, title=f"{settings.model_path} on {len(cases)} labelled emails"
    ):
        print(line)
    wrong = [r for r in results if r.predicted != r.expected]
    if wrong:
        print("\nmisclassified:")
        for r in wrong:
            print(
                f"  {r.case.path.name}: expected {';'.join(r.case.topics) or 'automatic'}, "
                f"got {r.predicted} ({r.decision.reason})"
            )
    if args.html:
        from triage.report import write_html

        write_html(
            args.html,
            results,
            scores,
            model,
            title=", ".join(map(str, args.paths or ["samples/inbox"])),
            model_path=str(settings.model_path),
        )
        print(f"\nwrote {args.html}")
    return 0


# --- operator's tools
def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    return 0


def _cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    if settings.imap_host:
        raise ConfigError("triage load fills the local Maildir; unset TRIAGE_IMAP_HOST to use it")
    mailbox = LocalMailbox(settings.maildir, folder=settings.imap_folder)
    parser = BytesHeaderParser()
    _, keys = mailbox.keys()
    present = {
        str(parser.parsebytes(raw.raw).get("Message-ID", "")).strip() for raw in mailbox.fetch(keys)
    }
    added = skipped = 0
    for path in args.paths:
        for file in _message_files(path):
            raw = file.read_bytes()
            message_id = str(parser.parsebytes(raw).get("Message-ID", "")).strip()
            if message_id and message_id in present:
                skipped += 1
                continue
            mailbox.add(raw, folder=settings.imap_folder)
            present.add(message_id)
            added += 1
    print(
        f"loaded {added} messages into {mailbox.folder_path(settings.imap_folder)}/new/"
        + (f" ({skipped} already there)" if skipped else "")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage",
        description="Email triage and auto-reply worker for the ECT programme's support mailbox.",
    )
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="watch the mailbox and handle each new message",
        description="Watch the configured mailbox (IMAP, or the local Maildir) and "
        "handle each new message: classify, draft a reply, forward or hand off.",
    )
    p.add_argument(
        "--once", action="store_true", help="handle what is new, print a summary and exit"
    )
    p.add_argument("--dry-run", action="store_true", help="decide and report, write nothing at all")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "classify",
        help="classify emails or a text; touches no mailbox",
        description="Classify .eml files, directories of them, a Maildir, or a text.",
    )
    p.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help=".eml file, directory or Maildir"
    )
    p.add_argument(
        "--text", action="append", metavar="TEXT", help="classify this text (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per message, one per line")
    p.add_argument("--explain", action="store_true", help="show the terms that decided")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser(
        "train",
        help="train the model from the training data and print its report",
        description="Check the training data, cross-validate, choose the thresholds, "
        "write the model and its card to models/.",
    )
    p.add_argument("--seed", type=int, default=classifier.SEED, help="random seed (default: fixed)")
    p.add_argument(
        "--force",
        action="store_true",
        help="install the new model even when it is worse than the installed one",
    )
    p.add_argument(
        "--samples",
        type=Path,
        default=Path("samples/inbox"),
        metavar="DIR",
        help="held-out labelled emails to report on (never trained on; default samples/inbox)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate the installed model on labelled emails",
        description="Score the installed model on labelled .eml files (labels.csv beside them).",
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="labelled .eml files or directories (default samples/inbox)",
    )
    p.add_argument(
        "--html", type=Path, metavar="FILE", help="also write the report as one HTML page"
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "config",
        help="print the effective settings, secrets masked",
        description="Print every TRIAGE_ setting as it is in force, secrets masked.",
    )
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "load",
        help="deliver .eml files into the local Maildir's INBOX",
        description="Copy .eml files (or directories of them) into the local Maildir, "
        "unchanged, skipping Message-IDs already there.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help=".eml file or directory")
    p.set_defaults(func=_cmd_load)

    # staff review and the learning loop: their subcommands live with their code
    from triage import learning, review

    review.add_parsers(sub)
    learning.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if (args.verbose or args.command == "run")
        else logging.WARNING
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # imapclient logs the start of every APPENDed message at DEBUG: bodies never reach our logs.
    logging.getLogger("imapclient").setLevel(max(level, logging.INFO))
    try:
        settings = load_settings()
        return int(args.func(args, settings))
    except TriageError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status


__all__ = ["build_parser", "main", "open_mailbox"]
