"""Message in / out: the Mailbox interface that the IMAP and the local Maildir mailboxes share.

The worker asks a mailbox for the keys of the messages in the watched folder (cheap), leaves out
those the journal already holds, and fetches only the rest. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol, runtime_checkable

# Keyword set on an original once it is handled (IMAP keyword; the journal is the real record).
TRIAGED_KEYWORD = "$Triaged"
# Keyword set on an original handed to a human.
HANDOFF_KEYWORD = "$TriageHuman"
# Header a draft or forward carries with the Message-ID of the message it answers, so that a
# restart can find what was already written (exactly once across crashes).
SOURCE_HEADER = "X-Triage-Source"


@dataclass(frozen=True)
class Incoming:
    """One message as the mailbox holds it: where it is and its raw bytes, untouched (or only
    its header, for a message above the size limit: see ``imap.ImapMailbox``)."""

    folder: str
    uidvalidity: int
    uid: str  # IMAP UID as text, or the Maildir key
    raw: bytes  # the whole message; only its header when ``truncated``
    size: int | None = None  # the message's size on the server (RFC822.SIZE), when known
    truncated: bool = False  # too large: the body was left on the server, unread


@runtime_checkable
class Mailbox(Protocol):
    """What the worker needs from a mailbox; ``imap.ImapMailbox`` and ``maildir.LocalMailbox``."""

    @property
    def description(self) -> str:
        """Where this mailbox is, for people: ``maildir mail/`` or ``imap support@host``."""
        ...

    def keys(self) -> tuple[int, list[str]]:
        """The watched folder's UIDVALIDITY and the uids of every message in it, oldest first."""
        ...

    def fetch(self, uids: Iterable[str]) -> Iterator[Incoming]:
        """The raw messages with these uids, without changing them (no ``\\Seen``)."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until new mail may have arrived (IMAP IDLE) or ``timeout`` seconds pass."""
        ...

    def save_draft(self, message: EmailMessage) -> str:
        """Store ``message`` in the Drafts folder with the ``\\Draft`` flag; say where it went."""
        ...

    def find_draft(self, source_message_id: str) -> bool:
        """Whether Drafts already holds a draft whose ``X-Triage-Source`` is this Message-ID."""
        ...

    def mark(self, incoming: Incoming, keywords: Iterable[str], *, flagged: bool = False) -> None:
        """Add keywords (and ``\\Flagged``) to an original; its content stays as it is."""
        ...

    def move(self, incoming: Incoming, folder: str) -> None:
        """Move an original to another folder, creating the folder when it is missing."""
        ...

    def close(self) -> None:
        """Log out or release the mailbox."""
        ...

    # --- staff review and the learning loop (``triage review``, ``triage learn``)

    def get_draft(self, source_message_id: str) -> bytes | None:
        """The newest draft whose ``X-Triage-Source`` is this Message-ID, raw; None if none."""
        ...

    def delete_draft(self, source_message_id: str) -> int:
        """Remove the drafts whose ``X-Triage-Source`` is this Message-ID; how many there were."""
        ...

    def subfolder(self, *parts: str) -> str:
        """A folder name from hierarchy parts: ``Triage/events`` (IMAP), ``Triage.events``."""
        ...

    def has_folder(self, name: str) -> bool:
        """Whether the folder exists."""
        ...

    def create_folder(self, name: str) -> bool:
        """Create a folder (and its parents); False when it was there already."""
        ...

    def read_folder(self, name: str) -> Iterator[Incoming]:
        """Every message of a folder, oldest first, without changing any (none if no folder)."""
        ...

    def sent_folder(self) -> str:
        """The name of the Sent folder (IMAP special-use ``\\Sent``)."""
        ...

    def save_sent(self, raw: bytes) -> str:
        """File a copy of a sent message in the Sent folder; say where it went."""
        ...

    def holds(self, folder: str, message_id: str) -> bool:
        """Whether ``folder`` holds a message with this Message-ID."""
        ...

    def fetch_original(
        self, folder: str, uidvalidity: int, uid: str, message_id: str = ""
    ) -> Incoming | None:
        """A message by its uid in ``folder``, else by its Message-ID there; None if gone."""
        ...


__all__ = ["HANDOFF_KEYWORD", "SOURCE_HEADER", "TRIAGED_KEYWORD", "Incoming", "Mailbox"]
