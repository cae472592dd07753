"""Staff review: the journal and the drafts, for the operator (``triage review``, ``triage stats``).

``review list`` and ``review show`` read; ``approve`` sends a draft as it is, ``correct`` records
the right label (a training example) and replaces the draft or hands the message off, and
``discard`` throws a draft away. Every verdict goes to the journal's reviews, from which
``triage stats`` tells how often staff send our drafts unchanged: the evidence for send mode.
"""

from __future__ import annotations

import argparse
import email
import json
from collections import Counter
from datetime import date
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage import learning
from triage.config import Settings
from triage.errors import ConfigError, MailboxError
from triage.journal import VERDICTS, Entry, Journal, Review
from triage.query import parse
from triage.topics import LABELS, OTHER, TOPICS

if TYPE_CHECKING:
    from triage.mailbox import Mailbox

# A topic earns automatic sending (TRIAGE_MODE=send, with safe = true in replies/routing.toml)
# once staff have reviewed at least this many of its drafts ...
AUTO_SEND_MIN_REVIEWED = 50
# ... and sent at least this share of them unchanged (issue 6's example bar: one edit in fifty
# means a person still has to read every draft).
AUTO_SEND_MIN_UNCHANGED = 0.98
# How a verdict shows in the status column of ``review list``.
_SHOWN = {
    "unchanged": "sent as drafted",
    "changed": "sent changed",
    "discarded": "discarded",
    "corrected": "corrected",
}
ACTIONS = ("reply", "forward", "human", "ignore")


# --- shared helpers -----------------------------------------------------------------------------


def _since(text: str) -> str:
    """argparse type for --since: a date as YYYY-MM-DD."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use YYYY-MM-DD, e.g. 2024-09-01"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _journal(settings: Settings) -> Journal:
    path = Path(settings.state_db)
    if not path.exists():
        raise ConfigError(
            f"{path}: no journal yet; run 'triage run' first, or set TRIAGE_STATE_DB to the "
            "worker's journal"
        )
    return Journal(path)


def _entry(journal: Journal, entry_id: int) -> Entry:
    entry = journal.get(entry_id)
    if entry is None:
        raise ConfigError(
            f"no journal entry {entry_id} in {journal.path}; 'triage review list' shows the ids"
        )
    return entry


def _source(entry: Entry) -> str:
    """The original's Message-ID, which its draft carries as X-Triage-Source."""
    if not entry.message_id:
        raise ConfigError(
            f"entry {entry.id} has no Message-ID, so no draft of ours can be found for it; "
            "answer it from your mail client"
        )
    return entry.message_id


def _open_mailbox(settings: Settings) -> Mailbox:
    from triage.cli import open_mailbox  # the one place that chooses IMAP or the Maildir

    return open_mailbox(settings)


def _time(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _status(entry: Entry, reviews: list[Review]) -> str:
    """What staff did, in order (``corrected, sent as drafted``), else the journal's status."""
    shown = dict.fromkeys(_SHOWN[r.verdict] for r in reviews)
    return ", ".join(shown) if shown else entry.status


def _topics(entry: Entry) -> str:
    if entry.topics:
        return ",".join(entry.topics)
    return OTHER if entry.action == "human" else "-"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _parsed(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=default_policy)


def _indented(text: str, prefix: str = "  | ") -> list[str]:
    lines = text.rstrip().splitlines() or [""]
    return [f"{prefix}{line}".rstrip() for line in lines]


# --- review list --------------------------------------------------------------------------------


def _cmd_review_list(args: argparse.Namespace, settings: Settings) -> int:
    journal = _journal(settings)
    try:
        if args.topic == OTHER:  # hand-offs: no topic was answered
            found = journal.entries(action=args.action, since=args.since, limit=2**62)
            entries = [e for e in found if not e.topics and e.action == "human"][: args.limit]
        else:
            entries = journal.entries(
                action=args.action, topic=args.topic, since=args.since, limit=args.limit
            )
        reviews = {e.id: journal.reviews(e.id) for e in entries}
    finally:
        journal.close()
    if args.json:
        for e in entries:
            record = {
                "id": e.id,
                "time": e.created_at,
                "sender": e.sender,
                "subject": e.subject,
                "topics": list(e.topics),
                "confidence": round(e.confidence, 4),
                "action": e.action,
                "status": e.status,
                "review": _worst(reviews[e.id]),
                "reason": e.reason,
            }
            print(json.dumps(record, ensure_ascii=False))
        return 0
    if not entries:
        print("no journal entries" + (" match" if args.action or args.topic or args.since else ""))
        return 0
    header = (
        f"{'id':>5}  {'time (UTC)':<16}  {'sender':<28}  {'subject':<34}  {'topics':<24}"
        f"  {'conf':>4}  {'action':<7}  status"
    )
    print(header)
    for e in entries:
        print(
            f"{e.id:>5}  {_time(e.created_at):<16}  {_cut(e.sender, 28):<28}  "
            f"{_cut(e.subject, 34):<34}  {_cut(_topics(e), 24):<24}  {e.confidence:>4.2f}  "
            f"{e.action:<7}  {_status(e, reviews[e.id])}"
        )
    return 0


# --- review show --------------------------------------------------------------------------------


def _cmd_review_show(args: argparse.Namespace, settings: Settings) -> int:
    journal = _journal(settings)
    try:
        entry = _entry(journal, args.id)
        reviews = journal.reviews(entry.id)
    finally:
        journal.close()
    lines = [
        f"entry {entry.id}: {entry.action} {_topics(entry)} ({entry.confidence:.2f}), "
        f"{_status(entry, reviews)}",
        f"  from:     {entry.sender or '-'}",
        f"  subject:  {entry.subject or '-'}",
        f"  time:     {_time(entry.created_at)} UTC, {entry.folder} uid {entry.uid}",
        f"  reason:   {entry.reason or '-'}",
    ]
    if entry.outcome:
        lines.append(f"  outcome:  {entry.outcome}")
    if entry.error:
        lines.append(f"  error:    {entry.error}")
    for r in reviews:
        what = _SHOWN[r.verdict]
        if r.topics:
            what += " to " + ",".join(r.topics)
        if r.similarity is not None and r.verdict == "changed":
            what += f" (similarity {r.similarity:.2f})"
        lines.append(f"  review:   {what} ({r.source}, {_time(r.created_at)})")
    mailbox = _open_mailbox(settings)
    try:
        original = learning.find_original(mailbox, entry, settings)
        draft = mailbox.get_draft(entry.message_id) if entry.message_id else None
    finally:
        mailbox.close()
    lines.append("")
    if original is None:
        lines.append(
            f"new text it read: the original is no longer in {entry.folder} (moved or deleted)"
        )
    else:
        query = parse(original.raw, support_address=settings.support_address)
        lines.append("new text it read:")
        lines += _indented(query.text or "(none)")
        if not (query.automatic or query.problem):
            from triage import classifier

            model = classifier.load(settings.model_path)
            result = model.classify(query, explain=True)
            top = sorted(result.scores.items(), key=lambda kv: -kv[1])[:3]
            lines += [
                "",
                "why (the installed model, now):",
                "  scores:         " + ", ".join(f"{label} {p:.2f}" for label, p in top),
                "  deciding terms: " + (", ".join(result.terms) or "-"),
            ]
    lines.append("")
    if draft is None:
        lines.append("draft: none in Drafts (sent, discarded, or none was made)")
    else:
        message = _parsed(draft)
        lines.append("draft (in Drafts):")
        for name in ("To", "Subject", "X-Triage-Topic", "In-Reply-To"):
            if message.get(name):
                lines.append(f"  {name}: {message[name]}")
        lines.append("")
        lines += _indented(learning.text_body(draft))
    for line in lines:
        print(line)
    return 0


def _worst(reviews: list[Review]) -> str | None:
    return max((r.verdict for r in reviews), key=VERDICTS.index) if reviews else None


# --- review approve -----------------------------------------------------------------------------


def _cmd_review_approve(args: argparse.Namespace, settings: Settings) -> int:
    from triage.outbox import open_outbox

    journal = _journal(settings)
    mailbox = _open_mailbox(settings)
    try:
        entry = _entry(journal, args.id)
        source = _source(entry)
        approved = [r for r in journal.reviews(entry.id) if r.source == "approve"]
        raw = mailbox.get_draft(source)
        if raw is None:
            if approved:
                when = _time(approved[0].created_at)
                print(f"entry {entry.id}: already approved and sent ({when} UTC)")
                return 0
            raise MailboxError(
                f"entry {entry.id}: no draft in Drafts for {source} (sent, discarded, or none "
                f"was made); see 'triage review show {entry.id}'"
            )
        headers = BytesHeaderParser().parsebytes(raw)
        draft_id = " ".join(str(headers.get("Message-ID", "")).split())
        if approved:  # sent by an earlier approve that stopped before it finished
            where = "an earlier approve"
        else:
            # staff may have edited the draft in their mail client before approving it here
            drafted = learning.drafted_text(mailbox, settings, journal, entry)
            ratio = (
                None if drafted is None else learning.similarity(drafted, learning.text_body(raw))
            )
            outbox = open_outbox(settings)
            where = outbox.deliver(raw)
            journal.record_review(
                entry.id,
                "unchanged" if ratio == 1.0 else "changed",
                similarity=ratio,
                sent_message_id=draft_id,
                source="approve",
            )
        sent_folder = mailbox.sent_folder()
        if draft_id and mailbox.holds(sent_folder, draft_id):
            filed = sent_folder
        else:
            filed = mailbox.save_sent(raw)
        mailbox.delete_draft(source)
        journal.update(entry.id, outcome=f"approved by staff: sent via {where}; copy in {filed}")
    finally:
        mailbox.close()
        journal.close()
    print(f"entry {entry.id}: sent the draft to {headers.get('To', '?')} via {where}")
    print(f"  a copy is in {filed}; the draft is gone from Drafts")
    return 0


# --- review correct -----------------------------------------------------------------------------


def _cmd_review_correct(args: argparse.Namespace, settings: Settings) -> int:
    from triage import actions
    from triage.outbox import open_outbox
    from triage.reply import Composer
    from triage.routing import Router

    topics = tuple(dict.fromkeys(args.topic))
    if OTHER in topics and len(topics) > 1:
        raise ConfigError(
            "--topic other means none of the FAQ topics: give it alone, or give only topics"
        )
    journal = _journal(settings)
    try:
        entry = _entry(journal, args.id)
        if entry.action == "ignore":
            raise ConfigError(
                f"entry {entry.id} was not read as a question ({entry.reason}); there is no "
                "label to correct"
            )
        was = entry.topics if entry.topics else (OTHER,)
        if topics == was:
            raise ConfigError(
                f"entry {entry.id} is already labelled {','.join(topics)}; to send its draft "
                f"use 'triage review approve {entry.id}'"
            )
        mailbox = _open_mailbox(settings)
        try:
            original = learning.find_original(mailbox, entry, settings)
            if original is None:
                raise MailboxError(
                    f"entry {entry.id}: the original is no longer in {entry.folder}, so its text "
                    "cannot be recorded; move it back, or file it in Triage/<topic> and run "
                    "'triage learn'"
                )
            query, text = learning.read_as_classified(
                original.raw, support_address=settings.support_address
            )
            recorded = "not recorded: the message has no text to learn from"
            if text:
                corrections = learning.Corrections(settings.training_dir)
                result = corrections.add(
                    topics[0], text, message_id=query.message_id, source=f"review {entry.id}"
                )
                corrections.save()
                recorded = f"{result} in {corrections.path}"
            journal.record_review(entry.id, "corrected", topics=topics, source="correct")
            removed = mailbox.delete_draft(entry.message_id) if entry.message_id else 0
            notes: list[str] = []
            if topics == (OTHER,):
                done = actions.handoff(original, settings).apply(mailbox, open_outbox(settings))
                journal.update(
                    entry.id,
                    action="human",
                    topics="",
                    confidence=1.0,
                    reason="corrected by staff: none of the FAQ topics (other)",
                    outcome=f"{done} (draft removed by staff)" if removed else done,
                )
                drafted = f"{removed} draft{'s' if removed != 1 else ''} removed; {done}"
            else:
                composer, router = Composer(settings), Router.from_settings(settings)
                reason = f"corrected by staff to {', '.join(topics)}"
                message = learning.render_draft(composer, router, query, topics, reason)
                where = mailbox.save_draft(message)
                journal.record_draft(
                    entry.message_id or query.message_id,
                    learning.text_body(message.as_bytes()),
                    entry_id=entry.id,
                    message_id=str(message["Message-ID"]),
                    topics=topics,
                )
                journal.update(
                    entry.id,
                    action="reply",
                    topics=",".join(topics),
                    confidence=1.0,
                    reason=reason,
                    outcome=f"draft {where}",
                )
                drafted = f"draft for {', '.join(topics)} saved: {where}"
                if removed:
                    drafted = f"draft replaced; {drafted}"
                for topic in topics:
                    rule = router.table.rule(topic)
                    if rule.action in ("forward", "both") and rule.party:
                        notes.append(
                            f"note: the worker also forwards {topic} to the "
                            f"{rule.party.replace('_', ' ')}; forward it yourself if that is needed"
                        )
        finally:
            mailbox.close()
    finally:
        journal.close()
    print(f"entry {entry.id}: corrected to {', '.join(topics)} (was {', '.join(was)})")
    print(f"  training example: {recorded}")
    print(f"  {drafted}")
    for note in notes:
        print(f"  {note}")
    return 0


# --- review discard -----------------------------------------------------------------------------


def _cmd_review_discard(args: argparse.Namespace, settings: Settings) -> int:
    journal = _journal(settings)
    try:
        entry = _entry(journal, args.id)
        source = _source(entry)
        mailbox = _open_mailbox(settings)
        try:
            removed = mailbox.delete_draft(source)
        finally:
            mailbox.close()
        if not removed:
            raise MailboxError(
                f"entry {entry.id}: no draft in Drafts for {source} (sent, discarded, or none "
                f"was made); see 'triage review show {entry.id}'"
            )
        journal.record_review(entry.id, "discarded", source="discard")
        journal.update(entry.id, outcome="draft discarded by staff")
    finally:
        journal.close()
    print(f"entry {entry.id}: draft discarded ({removed} removed from Drafts)")
    return 0


# --- triage stats -------------------------------------------------------------------------------


def _stats(settings: Settings, since: str | None) -> dict[str, Any]:
    journal = _journal(settings)
    try:
        entries = [e for e in journal if since is None or e.created_at >= since]
        by_entry: dict[int, list[Review]] = {}
        for review in journal.reviews():
            by_entry.setdefault(review.entry_id, []).append(review)
    finally:
        journal.close()
    actions = Counter(e.action for e in entries)
    people = sum(n for action, n in actions.items() if action != "ignore")
    topics: dict[str, dict[str, Any]] = {
        t: {"messages": 0, "reviewed": 0, **dict.fromkeys(VERDICTS, 0)} for t in TOPICS
    }
    for e in entries:
        for t in e.topics:
            if t in topics:
                topics[t]["messages"] += 1
        reviews = by_entry.get(e.id)
        if not reviews or not reviews[0].model_topics:
            continue  # not reviewed, or the model made no draft (a hand-off labelled by staff)
        verdict = _worst(reviews)
        for t in reviews[0].model_topics:
            if t in topics and verdict:
                topics[t]["reviewed"] += 1
                topics[t][verdict] += 1
    for figures in topics.values():
        reviewed = figures["reviewed"]
        figures["unchanged_share"] = round(figures["unchanged"] / reviewed, 4) if reviewed else None
        figures["earned_auto_send"] = bool(
            reviewed >= AUTO_SEND_MIN_REVIEWED
            and figures["unchanged"] >= AUTO_SEND_MIN_UNCHANGED * reviewed
        )
    try:
        from triage.routing import load_table

        table = load_table(settings.replies_dir / "routing.toml")
        safe = [t for t in TOPICS if table.rule(t).safe]
    except ConfigError:
        safe = []
    return {
        "since": since,
        "messages": len(entries),
        "actions": {a: actions.get(a, 0) for a in ACTIONS},
        "handoff_rate": round(actions.get("human", 0) / people, 4) if people else None,
        "topics": topics,
        "earned_auto_send": [t for t, f in topics.items() if f["earned_auto_send"]],
        "marked_safe": safe,
        "bar": {"min_reviewed": AUTO_SEND_MIN_REVIEWED, "min_unchanged": AUTO_SEND_MIN_UNCHANGED},
    }


def _share(n: int, total: int) -> str:
    return f"{n} ({n / total:.0%})" if total else "-"


def _cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    stats = _stats(settings, args.since)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    period = f"since {args.since}" if args.since else "in all"
    actions = stats["actions"]
    people = sum(n for a, n in actions.items() if a != "ignore")
    print(f"{settings.state_db}: {stats['messages']} messages {period}")
    print("by action: " + ", ".join(f"{a} {n}" for a, n in actions.items()))
    if stats["handoff_rate"] is None:
        print("hand-off rate: - (no messages from people)")
    else:
        print(
            f"hand-off rate: {stats['handoff_rate']:.1%} ({actions['human']} of {people} "
            "messages from people)"
        )
    print()
    print("drafts by topic, and what staff did with them:")
    print(
        f"{'topic':<24}{'messages':>9}{'reviewed':>9}{'unchanged':>12}{'changed':>11}"
        f"{'corrected':>11}{'discarded':>11}"
    )
    for topic, f in stats["topics"].items():
        if not f["messages"] and not f["reviewed"]:
            continue
        n = f["reviewed"]
        print(
            f"{topic:<24}{f['messages']:>9}{n:>9}{_share(f['unchanged'], n):>12}"
            f"{_share(f['changed'], n):>11}{_share(f['corrected'], n):>11}"
            f"{_share(f['discarded'], n):>11}"
        )
    print()
    print(
        f"automatic sending is earned by at least {AUTO_SEND_MIN_REVIEWED} reviewed drafts, "
        f"at least {AUTO_SEND_MIN_UNCHANGED:.0%} of them sent unchanged:"
    )
    earned = stats["earned_auto_send"]
    print("  earned: " + (", ".join(earned) if earned else "none yet"))
    waiting = [
        f"{t} ({f['reviewed']} reviewed, {f['unchanged_share']:.0%} unchanged)"
        for t, f in stats["topics"].items()
        if f["reviewed"] and not f["earned_auto_send"]
    ]
    if waiting:
        print("  not yet: " + ", ".join(waiting))
    unearned = [t for t in stats["marked_safe"] if t not in earned]
    if unearned:
        print(
            f"  marked safe in {settings.replies_dir / 'routing.toml'} without that evidence: "
            + ", ".join(unearned)
        )
    return 0


# --- the parsers --------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add this module's subcommands to ``triage``'s argument parser."""
    p = sub.add_parser(
        "review",
        help="staff review of decisions and drafts: list, show, approve, correct, discard",
        description="Look at what the worker decided and act on its drafts.",
    )
    actions = p.add_subparsers(dest="review_command", metavar="ACTION", required=True)

    q = actions.add_parser(
        "list",
        help="a table of recent decisions",
        description="Recent journal entries, newest first: time, sender, subject, topics, "
        "confidence, action and status (what staff did with the draft, once they did).",
    )
    q.add_argument("--action", choices=ACTIONS, help="only this action")
    q.add_argument(
        "--topic",
        choices=LABELS,
        metavar="TOPIC",
        help="only this topic (a topic id, or other for hand-offs)",
    )
    q.add_argument("--since", type=_since, metavar="YYYY-MM-DD", help="only from this day on (UTC)")
    q.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N entries (default 50)"
    )
    q.add_argument("--json", action="store_true", help="one JSON object per entry, one per line")
    q.set_defaults(func=_cmd_review_list)

    q = actions.add_parser(
        "show",
        help="one decision: the text read, why, and the draft",
        description="One journal entry: the new text it read (fetched again from the mailbox), "
        "the scores and deciding terms, and the draft in Drafts.",
    )
    q.add_argument("id", type=int, metavar="ID", help="journal entry id (see 'triage review list')")
    q.set_defaults(func=_cmd_review_show)

    q = actions.add_parser(
        "approve",
        help="send a draft as it is and file it in Sent",
        description="Send the entry's draft unchanged (SMTP, or the local Outbox folder), file a "
        "copy in Sent and remove it from Drafts.",
    )
    q.add_argument("id", type=int, metavar="ID", help="journal entry id")
    q.set_defaults(func=_cmd_review_approve)

    q = actions.add_parser(
        "correct",
        help="record the right topic and redo the draft",
        description="Record the right label as a training example (corrections.csv), and replace "
        "the draft with one for that topic; with --topic other, remove the draft and hand the "
        "message to a person.",
    )
    q.add_argument("id", type=int, metavar="ID", help="journal entry id")
    q.add_argument(
        "--topic",
        action="append",
        required=True,
        choices=LABELS,
        metavar="TOPIC",
        help="the right topic id (repeat for a second question), or other",
    )
    q.set_defaults(func=_cmd_review_correct)

    q = actions.add_parser(
        "discard",
        help="throw a draft away",
        description="Remove the entry's draft from Drafts without sending it.",
    )
    q.add_argument("id", type=int, metavar="ID", help="journal entry id")
    q.set_defaults(func=_cmd_review_discard)

    p = sub.add_parser(
        "stats",
        help="counts, hand-off rate, live precision and which topics earned sending",
        description="Per topic and action counts, the hand-off rate, what staff did with the "
        f"drafts of each topic, and which topics have earned automatic sending (at least "
        f"{AUTO_SEND_MIN_REVIEWED} reviewed drafts, {AUTO_SEND_MIN_UNCHANGED:.0%} sent unchanged).",
    )
    p.add_argument("--since", type=_since, metavar="YYYY-MM-DD", help="only from this day on (UTC)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.set_defaults(func=_cmd_stats)


__all__ = ["ACTIONS", "AUTO_SEND_MIN_REVIEWED", "AUTO_SEND_MIN_UNCHANGED", "add_parsers"]
