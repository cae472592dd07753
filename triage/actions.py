"""Mailbox action: Decision + Reply -> changes on the server (drafts, sends, forwards, flags).

Each action can ``describe()`` itself (``--dry-run``) and ``apply()`` itself; ``plan`` turns a
decision into the list of actions for the mode in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from triage.config import Settings
from triage.journal import Journal
from triage.mailbox import HANDOFF_KEYWORD, TRIAGED_KEYWORD, Incoming, Mailbox
from triage.outbox import Outbox
from triage.reply import Reply
from triage.routing import Decision


class Action(Protocol):
    def describe(self) -> str: ...

    def apply(self, mailbox: Mailbox, outbox: Outbox) -> str: ...


@dataclass(frozen=True)
class SaveDraft:
    """Store the reply in Drafts for staff to review and send (skipped if already there)."""

    message: EmailMessage
    source_id: str
    check_existing: bool = False  # a retry after a crash: look for our earlier draft first

    def describe(self) -> str:
        return f"draft reply to {self.message['To']} ({self.message['X-Triage-Topic']})"

    def apply(self, mailbox: Mailbox, outbox: Outbox) -> str:
        if self.check_existing and self.source_id and mailbox.find_draft(self.source_id):
            return "draft already in Drafts"
        return "draft " + mailbox.save_draft(self.message)


@dataclass(frozen=True)
class Send:
    """Send a message without a person pressing send: a reply (send mode) or a forward.

    The worker sends it through its durable queue (``outbox.OutboxQueue``), tied to the
    original's journal entry; ``apply`` sends it directly, for callers without a queue.
    """

    message: EmailMessage
    what: str  # "reply" or "forward to <address>"
    kind: str = "forward"  # "reply" or "forward": with the recipient, one per original

    def describe(self) -> str:
        return f"send {self.what} to {self.message['To']}"

    def apply(self, mailbox: Mailbox, outbox: Outbox) -> str:
        return f"{self.what} sent via {outbox.send(self.message)}"


@dataclass(frozen=True)
class Mark:
    """Keywords (and \\Flagged) on the original; optionally move it for the humans."""

    incoming: Incoming
    keywords: tuple[str, ...]
    flagged: bool = False
    move_to: str | None = None

    def describe(self) -> str:
        what = " ".join(self.keywords) + (" \\Flagged" if self.flagged else "")
        return f"mark original {what}" + (f", move to {self.move_to}" if self.move_to else "")

    def apply(self, mailbox: Mailbox, outbox: Outbox) -> str:
        mailbox.mark(self.incoming, self.keywords, flagged=self.flagged)
        if self.move_to:
            mailbox.move(self.incoming, self.move_to)
            return f"handed off to {self.move_to}"
        return "flagged for a human" if self.flagged else "marked"


def may_send(decision: Decision, settings: Settings, journal: Journal, address: str) -> str | None:
    """Why a reply may NOT be sent automatically (RFC 3834 manners), or None when it may."""
    if settings.mode != "send":
        return f"mode is {settings.mode}"
    if not decision.safe:
        return "a topic is not marked safe to send in the routing table"
    if address.lower() == settings.support_address.lower():
        return "the reply would go to the support address itself"
    for topic in decision.topics:
        if journal.sent_recently(address, topic, settings.reply_interval_days):
            days = settings.reply_interval_days
            return f"{address} had an automatic reply about {topic} in the last {days:g} days"
    if journal.sends_since(settings.circuit_minutes) >= settings.circuit_max_sends:
        return (
            f"circuit breaker: {settings.circuit_max_sends} automatic sends in "
            f"{settings.circuit_minutes:g} minutes"
        )
    return None


def handoff(incoming: Incoming, settings: Settings) -> Mark:
    """The mark that hands an original to a human: ``\\Flagged``, the hand-off keyword, and a
    move to ``TRIAGE_IMAP_HANDOFF_FOLDER`` when it is set."""
    return Mark(incoming, (TRIAGED_KEYWORD, HANDOFF_KEYWORD), True, settings.imap_handoff_folder)


def plan(
    decision: Decision,
    reply: Reply,
    incoming: Incoming,
    *,
    settings: Settings,
    send_reply: bool = False,
    retry: bool = False,
) -> list[Action]:
    """The actions that carry out a decision."""
    actions: list[Action] = []
    if decision.action == "ignore":
        return actions
    if reply.reply is not None:
        source = reply.reply.get("X-Triage-Source", "")
        if send_reply:
            actions.append(Send(reply.reply, "reply", "reply"))
        else:
            actions.append(SaveDraft(reply.reply, source, check_existing=retry))
    for forward in reply.forwards:
        actions.append(Send(forward, f"forward to {forward['To']}", "forward"))
    if decision.action == "human":
        actions.append(handoff(incoming, settings))
    else:
        actions.append(Mark(incoming, (TRIAGED_KEYWORD,)))
    return actions


__all__ = ["Action", "Mark", "SaveDraft", "Send", "handoff", "may_send", "plan"]
