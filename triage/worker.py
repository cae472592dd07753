"""The worker: runs the stages for one message, and the loop that watches the mailbox.

mailbox -> query.parse -> classifier -> routing -> reply -> actions -> journal

Exactly once: the journal holds a message's intent (``pending``) before anything is written and
its outcome after. A pending entry found on a later pass is retried with care: the draft is
looked for in Drafts before a new one is written, and queued mail is found by entry in the
outbox queue (``outbox.OutboxQueue``), so a crash at any point leaves one draft, one forward and
one hand-off per message. Forwards are at least once on the wire: see ``outbox``.

Throughput: a pass fetches 100 messages at a time, scores them with one model call, and writes
the drafts of messages that need nothing else (no retry, no move, no reply sent) with one
MULTIAPPEND and their marks with one UID STORE per set of flags. ``stop`` is honoured between
messages: the messages already begun (intent journalled) are finished, no new one is begun.
"""

from __future__ import annotations

import imaplib
import inspect
import itertools
import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from triage import actions as actions_mod
from triage.classifier import Classification, Model
from triage.config import Settings
from triage.errors import MailboxError, TriageError
from triage.journal import Journal
from triage.mailbox import Incoming, Mailbox
from triage.outbox import Delivery, Outbox, OutboxQueue, SendError
from triage.query import Query, parse
from triage.reply import Composer
from triage.routing import Decision, Router

log = logging.getLogger(__name__)

# Reconnect back-off after a lost server: doubling from 1 s, capped, with jitter (issue 4).
BACKOFF_START_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
# Messages decided together: one batch of the model (classify_many), as many as one IMAP
# FETCH brings (imap.FETCH_BATCH).
DECIDE_BATCH = 100
# How often a wait that cannot watch the stop event looks at it (SIGTERM latency while idle).
STOP_CHECK_SECONDS = 0.25
# Shortest wait between passes while queued mail is due (no busy loop when SMTP is down).
MIN_WAIT_SECONDS = 1.0
# Of a message above TRIAGE_MAX_MESSAGE_BYTES, only this much is parsed (for its sender, subject
# and Message-ID); the IMAP mailbox fetches no more than this of its header (imap.py).
TOO_LARGE_HEADER_BYTES = 65536
# Stands in for the query of a message that could not even be parsed.
_EMPTY_QUERY = Query("", "", "", "", "")


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
    deliveries: list[Delivery] = field(default_factory=list)  # queued mail retried this pass

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

    def lines(self, *, drafts_at: str, outbox_at: str = "", handoffs_at: str = "") -> list[str]:
        total = len(self.outcomes)
        out = [
            f"{total} new message{'s' if total != 1 else ''} handled"
            + (f", {self.skipped} already in the journal" if self.skipped else "")
        ]
        if total:
            actions = sorted(self.actions.items())
            out.append("  by action: " + ", ".join(f"{a} {n}" for a, n in actions))
        if self.topics:
            topics = self.topics.most_common()
            out.append("  by topic:  " + ", ".join(f"{t} {n}" for t, n in topics))
        if self.actions.get("reply"):
            out.append(f"  drafts are in {drafts_at}")
        forwards = sum(len(o.decision.forwards) for o in self.outcomes if o.status != "failed")
        if forwards and outbox_at:
            out.append(f"  {forwards} forward{'s' if forwards != 1 else ''} went to {outbox_at}")
        if self.actions.get("human") and handoffs_at:
            out.append(f"  hand-offs for a person are {handoffs_at}")
        if self.deliveries:
            counts = Counter(d.status for d in self.deliveries)
            out.append("  outbox: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
        for failure in self.failed:
            out.append(f"  failed: uid {failure.uid}: {failure.detail}")
        return out


@dataclass(frozen=True)
class _Begun:
    """A message whose intent is in the journal and whose actions are rendered, not yet done."""

    incoming: Incoming
    query: Query
    decision: Decision
    entry: int
    planned: list[actions_mod.Action]
    send_reply: bool

    @property
    def batchable(self) -> bool:
        """New drafts, forwards and marks that stay in place (no retry looking for an earlier
        draft, no reply sent in send mode, no move): can be written together with others."""
        return all(
            (isinstance(a, actions_mod.SaveDraft) and not a.check_existing)
            or (isinstance(a, actions_mod.Send) and a.kind == "forward")
            or (isinstance(a, actions_mod.Mark) and not a.move_to)
            for a in self.planned
        )


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
        # Everything sent goes through the durable queue in the journal's database.
        self.queue = OutboxQueue(outbox, journal)
        self._listed = False  # the watched folder was listed at least once

    # --- deciding: no side effects -------------------------------------------------------------

    def decide(self, incoming: Incoming) -> tuple[Query, Decision]:
        """Parse, classify and route one message; no side effects."""
        return self.decide_many([incoming])[0]

    def decide_many(self, batch: Sequence[Incoming]) -> list[tuple[Query, Decision]]:
        """``decide`` for a batch: the model scores the whole batch at once (one vectoriser and
        one predict_proba call instead of one per message); the decisions are the same. A
        message that cannot be decided goes to a human and never stops the batch."""
        queries: list[Query | None] = []
        decided: list[Decision | None] = []
        for incoming in batch:
            try:
                query, decision = self._parse(incoming)
            except Exception as exc:  # a message must never stop the worker
                log.exception("uid=%s cannot be decided", incoming.uid)
                query, decision = None, _unreadable(exc)
            queries.append(query)
            decided.append(decision)
        wanted = [
            i
            for i, (q, d) in enumerate(zip(queries, decided, strict=True))
            if q is not None and d is None and not (q.automatic or q.problem)
        ]
        results: dict[int, Classification] = {}
        if wanted:
            try:
                scored = self.model.classify_many([queries[i] for i in wanted])  # type: ignore[misc]
                results = dict(zip(wanted, scored, strict=True))
            except Exception:  # one bad text: score one by one, so only it goes to a human
                log.debug("batch classification failed; classifying one by one", exc_info=True)
        out: list[tuple[Query, Decision]] = []
        for i, incoming in enumerate(batch):
            query, decision = queries[i], decided[i]
            if query is not None and decision is None:
                try:
                    if query.automatic or query.problem:
                        result = None
                    else:
                        result = results[i] if i in results else self.model.classify(query)
                    decision = self.router.route(query, result)
                except Exception as exc:
                    log.exception("uid=%s cannot be decided", incoming.uid)
                    decision = _unreadable(exc)
            out.append((query or _EMPTY_QUERY, decision or _unreadable(None)))
        return out

    def _parse(self, incoming: Incoming) -> tuple[Query, Decision | None]:
        """The query, and the decision when no classification is needed (too large: a mailbox
        that left the body on the server marks the message ``truncated``)."""
        size = incoming.size if incoming.size is not None else len(incoming.raw)
        if incoming.truncated or size > self.settings.max_message_bytes:
            query = parse(
                incoming.raw[:TOO_LARGE_HEADER_BYTES],
                support_address=self.settings.support_address,
            )
            return query, Decision("human", (), f"too large to read automatically ({size} bytes)")
        return parse(incoming.raw, support_address=self.settings.support_address), None

    # --- acting ------------------------------------------------------------------------------

    def handle(self, incoming: Incoming) -> Outcome:
        """One message's whole path; a failure is journalled and returned, never raised."""
        query, decision = self.decide(incoming)
        return self._handle(incoming, query, decision)

    def _handle(self, incoming: Incoming, query: Query, decision: Decision) -> Outcome:
        started = self._begin(incoming, query, decision)
        if isinstance(started, Outcome):
            return started
        return self._complete(started)

    def _begin(self, incoming: Incoming, query: Query, decision: Decision) -> Outcome | _Begun:
        """Up to the journal's intent row and the rendered actions: an Outcome when nothing is
        left to do on the server (dry run, or a failure already journalled)."""
        earlier = self.journal.by_message_id(query.message_id) if query.message_id else None
        if earlier is not None and not (
            earlier.folder == incoming.folder
            and earlier.uidvalidity == incoming.uidvalidity
            and earlier.uid == incoming.uid
        ):
            decision = Decision("ignore", (), f"already handled as journal entry {earlier.id}")
        log.info(
            "uid=%s action=%s topics=%s confidence=%.2f",
            incoming.uid,
            decision.action,
            ",".join(decision.topics) or "-",
            decision.confidence,
        )
        if self.dry_run:
            rendered = self.composer.render(decision, query, raw=incoming.raw)
            planned = actions_mod.plan(decision, rendered, incoming, settings=self.settings)
            detail = "; ".join(a.describe() for a in planned) or "nothing"
            return Outcome(incoming.uid, decision, "dry-run", f"{decision.reason} -> {detail}")
        previous = self.journal.find(incoming.folder, incoming.uidvalidity, incoming.uid)
        entry = self.journal.begin(
            incoming.folder,
            incoming.uidvalidity,
            incoming.uid,
            message_id=query.message_id,
            sender=query.sender_address,
            subject=query.subject,
            action=decision.action,
            topics=decision.topics,
            confidence=decision.confidence,
            reason=decision.reason,
        )
        if self.settings.mode == "dry-run":
            self.journal.finish(entry, outcome="dry-run: nothing written")
            return Outcome(incoming.uid, decision, "done", "dry-run: nothing written")
        try:
            send_reply = False
            if decision.action == "reply":
                refusal = actions_mod.may_send(
                    decision, self.settings, self.journal, query.reply_to
                )
                send_reply = refusal is None
            rendered = self.composer.render(decision, query, raw=incoming.raw, automatic=send_reply)
            planned = actions_mod.plan(
                decision,
                rendered,
                incoming,
                settings=self.settings,
                send_reply=send_reply,
                retry=previous is not None,
            )
        except TriageError as exc:
            return self._failed(entry, incoming, decision, exc)
        return _Begun(incoming, query, decision, entry, planned, send_reply)

    def _complete(self, begun: _Begun) -> Outcome:
        """Carry out one message's actions and journal the outcome."""
        try:
            outcome, refused = self._act(begun)
        except (MailboxError, OSError) as exc:
            if not isinstance(exc, SendError):
                raise  # the server is gone: stop this pass, the entry stays pending for a retry
            return self._failed(begun.entry, begun.incoming, begun.decision, exc)
        except TriageError as exc:
            if _journal_broken(exc):
                raise  # full disk, read-only: not this message's fault; it stays pending
            return self._failed(begun.entry, begun.incoming, begun.decision, exc)
        self.journal.finish(begun.entry, outcome=outcome, error=refused)
        return Outcome(begun.incoming.uid, begun.decision, "done", outcome)

    def _failed(
        self, entry: int, incoming: Incoming, decision: Decision, exc: Exception
    ) -> Outcome:
        log.error("uid=%s failed: %s", incoming.uid, exc)
        self.journal.finish(entry, status="failed", error=str(exc))
        return Outcome(incoming.uid, decision, "failed", str(exc))

    def _act(self, begun: _Begun) -> tuple[str, str]:
        """Carry out the actions: (what was done, why a send was refused or "")."""
        incoming = begun.incoming
        results: list[str] = []
        refusals: list[str] = []
        refused_items: list[int] = []
        for action in begun.planned:
            if isinstance(action, actions_mod.Send):
                delivery = self.queue.submit(
                    action.message,
                    kind=action.kind,
                    entry_id=begun.entry,
                    source=incoming,
                    mailbox=self.mailbox,
                )
                if delivery.status == "refused":
                    refusals.append(f"{action.what} refused: {delivery.detail}")
                    refused_items.append(delivery.item.id)
                    results.append(f"{action.what} refused: handed to a human")
                else:
                    results.append(f"{action.what} {delivery.detail}")
                continue
            if isinstance(action, actions_mod.Mark) and refusals and not action.flagged:
                action = actions_mod.handoff(incoming, self.settings)  # 5xx: a person takes over
            results.append(action.apply(self.mailbox, self.outbox))
        for item_id in refused_items:
            self.journal.queue_handed_off(item_id)
        if begun.send_reply:
            for topic in begun.decision.topics:
                self.journal.record_send(begun.query.reply_to, topic)
        return "; ".join(results), "; ".join(refusals)

    def _complete_group(self, group: list[_Begun]) -> list[Outcome]:
        """Carry out messages whose actions are new drafts, sends and marks that stay in place
        with one MULTIAPPEND for all the drafts and one UID STORE per set of flags (sends go
        through the queue one by one, as always), then journal each outcome. Every intent is in
        the journal before the first write, so a crash anywhere leaves pending entries that the
        next pass retries one by one, looking for their drafts first and finding their queued
        mail by entry, exactly as after a crash in the one-by-one path."""
        if not group:
            return []
        save_drafts = getattr(self.mailbox, "save_drafts", None)
        mark_many = getattr(self.mailbox, "mark_many", None)
        if len(group) == 1 or save_drafts is None or mark_many is None:
            return [self._complete(begun) for begun in group]
        # results[i][j]: what action j of message i did, in the order of its plan
        results: list[list[str]] = [[""] * len(b.planned) for b in group]
        refusals: list[list[str]] = [[] for _ in group]
        refused_items: list[int] = []
        drafts = [
            (i, j, a.message)
            for i, b in enumerate(group)
            for j, a in enumerate(b.planned)
            if isinstance(a, actions_mod.SaveDraft)
        ]
        if drafts:
            saved = save_drafts([message for _, _, message in drafts])
            for (i, j, _), where in zip(drafts, saved, strict=True):
                results[i][j] = f"draft {where}"
        for i, begun in enumerate(group):
            for j, action in enumerate(begun.planned):
                if not isinstance(action, actions_mod.Send):
                    continue
                delivery = self.queue.submit(
                    action.message,
                    kind=action.kind,
                    entry_id=begun.entry,
                    source=begun.incoming,
                    mailbox=self.mailbox,
                )
                if delivery.status == "refused":
                    refusals[i].append(f"{action.what} refused: {delivery.detail}")
                    results[i][j] = f"{action.what} refused: handed to a human"
                    refused_items.append(delivery.item.id)
                else:
                    results[i][j] = f"{action.what} {delivery.detail}"
        marks: dict[tuple[tuple[str, ...], bool], list[Incoming]] = {}
        for i, begun in enumerate(group):
            for j, action in enumerate(begun.planned):
                if not isinstance(action, actions_mod.Mark):
                    continue
                if refusals[i] and not action.flagged:  # 5xx: a person takes over
                    action = actions_mod.handoff(begun.incoming, self.settings)
                marks.setdefault((action.keywords, action.flagged), []).append(action.incoming)
                results[i][j] = "flagged for a human" if action.flagged else "marked"
        for (keywords, flagged), originals in marks.items():
            mark_many(originals, keywords, flagged=flagged)
        for item_id in refused_items:
            self.journal.queue_handed_off(item_id)
        outcomes = []
        for i, begun in enumerate(group):
            if begun.send_reply:
                for topic in begun.decision.topics:
                    self.journal.record_send(begun.query.reply_to, topic)
            outcome = "; ".join(results[i])
            self.journal.finish(begun.entry, outcome=outcome, error="; ".join(refusals[i]))
            outcomes.append(Outcome(begun.incoming.uid, begun.decision, "done", outcome))
        return outcomes

    def flush_outbox(self) -> list[Delivery]:
        """Retry queued mail that is due; hand the originals of refused mail to a human."""
        deliveries = self.queue.flush(self.mailbox)
        for delivery in deliveries:
            if delivery.status == "refused" and not delivery.item.handed_off:
                self._hand_off_refused(delivery)
        return deliveries

    def _hand_off_refused(self, delivery: Delivery) -> None:
        item = delivery.item
        reason = f"{item.kind} to {item.recipient} refused: {delivery.detail}"
        source = delivery.source
        note = "handed to a human"
        if source is not None:
            try:
                actions_mod.handoff(source, self.settings).apply(self.mailbox, self.outbox)
            except MailboxError as exc:
                if _connection_lost(exc):
                    raise  # the server is gone: try again on the next pass
                log.warning("uid=%s cannot be flagged for a human: %s", source.uid, exc)
                note = f"not flagged ({exc})"
        if item.entry_id is not None:
            entry = self.journal.get(item.entry_id)
            if entry is not None:
                outcome = "; ".join(x for x in (entry.outcome, f"{reason}: {note}") if x)
                error = "; ".join(x for x in (entry.error, reason) if x)
                self.journal.update(item.entry_id, outcome=outcome, error=error)
        self.journal.queue_handed_off(item.id)
        log.warning("uid=%s %s: %s", source.uid if source else "-", reason, note)

    # --- the loop ----------------------------------------------------------------------------

    def new_messages(self) -> tuple[list[str], int]:
        """UIDs in the watched folder the journal has not finished, and how many it has."""
        uidvalidity, uids = self.mailbox.keys()
        folder = getattr(self.mailbox, "folder", self.settings.imap_folder)
        done = self.journal.handled(folder, uidvalidity, uids)
        return [u for u in uids if u not in done], len(done)

    def run_once(self, stop: threading.Event | None = None) -> Summary:
        """Handle everything new in the watched folder, once; with ``stop`` set, finish the
        current message and return."""
        summary = Summary()
        if not self.dry_run and self.settings.mode != "dry-run":
            summary.deliveries = self.flush_outbox()
        todo, summary.skipped = self.new_messages()
        self._listed = True
        messages = self.mailbox.fetch(todo)
        try:
            while not (stop is not None and stop.is_set()):
                batch = list(itertools.islice(messages, DECIDE_BATCH))
                if not batch:
                    break
                group: list[_Begun] = []  # begun, waiting to be written together
                ids: set[str] = set()  # their Message-IDs
                for incoming, (query, decision) in zip(batch, self.decide_many(batch), strict=True):
                    if query.message_id and query.message_id in ids:
                        # The same message twice: the first must be finished before the
                        # journal can tell that the second is a copy.
                        summary.outcomes.extend(self._complete_group(group))
                        group, ids = [], set()
                    started = self._begin(incoming, query, decision)
                    if isinstance(started, Outcome):
                        summary.add(started)
                    elif started.batchable:
                        group.append(started)
                        ids.add(query.message_id)
                    else:
                        summary.outcomes.extend(self._complete_group(group))
                        group, ids = [], set()
                        summary.add(self._complete(started))
                    if stop is not None and stop.is_set():
                        log.info("stopping after uid=%s", incoming.uid)
                        break
                summary.outcomes.extend(self._complete_group(group))
        finally:
            close = getattr(messages, "close", None)
            if close is not None:
                close()
        return summary

    def run_forever(self, stop: threading.Event) -> None:
        """Watch the mailbox until ``stop`` is set; reconnect with back-off when the server goes.

        A MailboxError before the watched folder could be listed even once (wrong password,
        unknown host, missing folder) is raised: a worker that never got going is
        misconfigured, and says so. After that, the
        pause after a MailboxError doubles from BACKOFF_START_SECONDS up to
        BACKOFF_CAP_SECONDS, times a random factor in [0.5, 1] (so many workers do not come
        back in step), and each attempt is logged; it never gives up.
        """
        delay = BACKOFF_START_SECONDS
        while not stop.is_set():
            try:
                summary = self.run_once(stop)
                if summary.outcomes:
                    log.info("handled %d new messages", len(summary.outcomes))
                delay = BACKOFF_START_SECONDS
                if not stop.is_set():
                    self._wait(stop)
            except MailboxError as exc:
                if not self._listed:
                    raise
                error: MailboxError = exc
                attempt = 0
                while not stop.is_set():
                    attempt += 1
                    pause = min(BACKOFF_CAP_SECONDS, delay) * random.uniform(0.5, 1.0)
                    log.warning(
                        "mailbox error: %s; reconnecting in %.1f s (attempt %d)",
                        error,
                        pause,
                        attempt,
                    )
                    stop.wait(pause)
                    delay = min(BACKOFF_CAP_SECONDS, delay * 2)
                    if stop.is_set():
                        break
                    reconnect = getattr(self.mailbox, "reconnect", None)
                    if reconnect is None:
                        break
                    try:
                        reconnect()
                    except MailboxError as again:
                        error = again
                        continue
                    log.info("reconnected to %s", self.mailbox.description)
                    break

    def _wait(self, stop: threading.Event) -> None:
        """Wait for new mail, at most until the next queued message is due."""
        timeout = self.settings.idle_seconds
        due = None if self.dry_run else self.queue.next_due()
        if due is not None:
            timeout = min(timeout, max(MIN_WAIT_SECONDS, due - time.time()))
        if _takes_stop(self.mailbox):
            self.mailbox.wait(timeout, stop=stop)  # type: ignore[call-arg]
            return
        # A mailbox whose wait() cannot watch ``stop`` (the Maildir) waits in short slices, and
        # its listing tells whether mail came (a slice may end just as mail arrives).
        before = self.mailbox.keys()
        deadline = time.monotonic() + timeout
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.mailbox.wait(min(left, STOP_CHECK_SECONDS))
            if self.mailbox.keys() != before:
                return


def _takes_stop(mailbox: Mailbox) -> bool:
    """Whether ``mailbox.wait`` takes a ``stop`` event (ImapMailbox does)."""
    try:
        return "stop" in inspect.signature(mailbox.wait).parameters
    except (TypeError, ValueError):
        return False


def _unreadable(exc: BaseException | None) -> Decision:
    what = type(exc).__name__ if exc is not None else "unknown error"
    return Decision("human", (), f"cannot be read: {what}")


def _journal_broken(exc: TriageError) -> bool:
    """Whether a TriageError is the journal failing to write (``Journal._write``)."""
    return isinstance(exc.__cause__, sqlite3.Error)


def _connection_lost(exc: MailboxError) -> bool:
    """Whether a MailboxError came from a lost or refused connection (not from one message)."""
    return isinstance(exc.__cause__, OSError | imaplib.IMAP4.abort)


__all__ = [
    "BACKOFF_CAP_SECONDS",
    "BACKOFF_START_SECONDS",
    "DECIDE_BATCH",
    "TOO_LARGE_HEADER_BYTES",
    "Outcome",
    "Summary",
    "Worker",
]
