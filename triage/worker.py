"""The worker: runs the stages for one message, and the loop that watches the mailbox.

mailbox -> query.parse -> classifier -> routing -> reply -> actions -> journal
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from triage import actions as actions_mod
from triage.classifier import Model
from triage.config import Settings
from triage.errors import MailboxError, TriageError
from triage.journal import Journal
from triage.mailbox import Incoming, Mailbox
from triage.outbox import Outbox, SendError
from triage.query import Query, parse
from triage.reply import Composer
from triage.routing import Decision, Router

log = logging.getLogger(__name__)

# Reconnect back-off after a lost server: doubling from 1 s, capped, with jitter (issue 4).
BACKOFF_START_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one message."""

    uid: str
    decision: Decision
    status: str  # done | failed | dry-run
    detail: str  # where the draft went, or what would be done, or the error


@dataclass
class Summary:
    """Counts over one pass, for the end-of-run report."""

    outcomes: list[Outcome] = field(default_factory=list)
    skipped: int = 0  # already in the journal

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    @property
    def actions(self) -> Counter[str]:
        return Counter(o.decision.action for o in self.outcomes)

    @property
    def topics(self) -> Counter[str]:
        return Counter(t for o in self.outcomes for t in o.decision.topics)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def lines(self, *, drafts_at: str) -> list[str]:
        total = len(self.outcomes)
        out = [f"{total} new message{'s' if total != 1 else ''} handled"
               + (f", {self.skipped} already in the journal" if self.skipped else "")]
        if total:
            out.append("  by action: " + ", ".join(f"{a} {n}" for a, n in sorted(self.actions.items())))
        if self.topics:
            out.append("  by topic:  " + ", ".join(f"{t} {n}" for t, n in self.topics.most_common()))
        if self.actions.get("reply"):
            out.append(f"  drafts are in {drafts_at}")
        for failure in self.failed:
            out.append(f"  failed: uid {failure.uid}: {failure.detail}")
        return out


class Worker:
    """The stages wired together for one mailbox."""

    def __init__(
        self,
        settings: Settings,
        *,
        mailbox: Mailbox,
        outbox: Outbox,
        model: Model,
        journal: Journal,
        router: Router | None = None,
        composer: Composer | None = None,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.mailbox = mailbox
        self.outbox = outbox
        self.model = model
        self.journal = journal
        self.router = router or Router.from_settings(settings)
        self.composer = composer or Composer(settings)
        self.dry_run = dry_run

    def decide(self, incoming: Incoming) -> tuple[Query, Decision]:
        """Parse, classify and route one message; no side effects."""
        if len(incoming.raw) > self.settings.max_message_bytes:
            query = parse(incoming.raw[:65536], support_address=self.settings.support_address)
            size = len(incoming.raw)
            return query, Decision("human", (), f"too large to read automatically ({size} bytes)")
        query = parse(incoming.raw, support_address=self.settings.support_address)
        result = None if (query.automatic or query.problem) else self.model.classify(query)
        return query, self.router.route(query, result)

    def handle(self, incoming: Incoming) -> Outcome:
        """One message's whole path; a failure is journalled and returned, never raised."""
        try:
            query, decision = self.decide(incoming)
        except Exception as exc:  # a message must never stop the worker
            log.exception("uid=%s cannot be decided", incoming.uid)
            query = Query("", "", "", "", "")
            decision = Decision("human", (), f"cannot be read: {type(exc).__name__}")
        earlier = self.journal.by_message_id(query.message_id) if query.message_id else None
        if earlier is not None and not (
            earlier.folder == incoming.folder
            and earlier.uidvalidity == incoming.uidvalidity
            and earlier.uid == incoming.uid
        ):
            decision = Decision("ignore", (), f"already handled as journal entry {earlier.id}")
        log.info(
            "uid=%s action=%s topics=%s confidence=%.2f",
            incoming.uid, decision.action, ",".join(decision.topics) or "-", decision.confidence,
        )
        if self.dry_run:
            rendered = self.composer.render(decision, query, raw=incoming.raw)
            planned = actions_mod.plan(decision, rendered, incoming, settings=self.settings)
            detail = "; ".join(a.describe() for a in planned) or "nothing"
            return Outcome(incoming.uid, decision, "dry-run", f"{decision.reason} -> {detail}")
        previous = self.journal.find(incoming.folder, incoming.uidvalidity, incoming.uid)
        entry = self.journal.begin(
            incoming.folder, incoming.uidvalidity, incoming.uid,
            message_id=query.message_id, sender=query.sender_address, subject=query.subject,
            action=decision.action, topics=decision.topics, confidence=decision.confidence,
            reason=decision.reason,
        )
        if self.settings.mode == "dry-run":
            self.journal.finish(entry, outcome="dry-run: nothing written")
            return Outcome(incoming.uid, decision, "done", "dry-run: nothing written")
        try:
            outcome = self._act(incoming, query, decision, retry=previous is not None)
        except (MailboxError, OSError) as exc:
            if not isinstance(exc, SendError):
                raise  # the server is gone: stop this pass, the entry stays pending for a retry
            self.journal.finish(entry, status="failed", error=str(exc))
            return Outcome(incoming.uid, decision, "failed", str(exc))
        except TriageError as exc:
            log.error("uid=%s failed: %s", incoming.uid, exc)
            self.journal.finish(entry, status="failed", error=str(exc))
            return Outcome(incoming.uid, decision, "failed", str(exc))
        self.journal.finish(entry, outcome=outcome)
        return Outcome(incoming.uid, decision, "done", outcome)

    def _act(self, incoming: Incoming, query: Query, decision: Decision, *, retry: bool) -> str:
        send_reply = False
        if decision.action == "reply":
            refusal = actions_mod.may_send(decision, self.settings, self.journal, query.reply_to)
            send_reply = refusal is None
        rendered = self.composer.render(decision, query, raw=incoming.raw, automatic=send_reply)
        planned = actions_mod.plan(
            decision, rendered, incoming, settings=self.settings, send_reply=send_reply, retry=retry
        )
        results = [action.apply(self.mailbox, self.outbox) for action in planned]
        if send_reply:
            for topic in decision.topics:
                self.journal.record_send(query.reply_to, topic)
        return "; ".join(results)

    def new_messages(self) -> tuple[list[str], int]:
        """UIDs in the watched folder the journal has not finished, and how many it has."""
        uidvalidity, uids = self.mailbox.keys()
        folder = getattr(self.mailbox, "folder", self.settings.imap_folder)
        done = self.journal.handled(folder, uidvalidity, uids)
        return [u for u in uids if u not in done], len(done)

    def run_once(self) -> Summary:
        """Handle everything new in the watched folder, once."""
        summary = Summary()
        todo, summary.skipped = self.new_messages()
        for incoming in self.mailbox.fetch(todo):
            summary.add(self.handle(incoming))
        return summary

    def run_forever(self, stop: threading.Event) -> None:
        """Watch the mailbox until ``stop`` is set; reconnect with back-off when the server goes."""
        delay = BACKOFF_START_SECONDS
        while not stop.is_set():
            try:
                summary = self.run_once()
                if summary.outcomes:
                    log.info("handled %d new messages", len(summary.outcomes))
                delay = BACKOFF_START_SECONDS
                if not stop.is_set():
                    self.mailbox.wait(self.settings.idle_seconds)
            except MailboxError as exc:
                pause = min(BACKOFF_CAP_SECONDS, delay) * random.uniform(0.5, 1.0)
                log.warning("mailbox error: %s; reconnecting in %.1f s", exc, pause)
                stop.wait(pause)
                delay = min(BACKOFF_CAP_SECONDS, delay * 2)
                reconnect = getattr(self.mailbox, "reconnect", None)
                if reconnect is not None:
                    try:
                        reconnect()
                    except MailboxError as again:
                        log.warning("reconnect failed: %s", again)


__all__ = ["BACKOFF_CAP_SECONDS", "BACKOFF_START_SECONDS", "Outcome", "Summary", "Worker"]

