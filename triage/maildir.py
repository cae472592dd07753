"""The local mailbox: a Maildir++ tree, the embedded default when no IMAP host is set.

INBOX is the root's ``new/`` and ``cur/``; other folders are ``.Drafts``, ``.Sent``, ``.Outbox``
beside them, as Dovecot, mutt and offlineimap lay them out. Reading never changes a message: a
file is only ever renamed (flags in its name) or moved, never rewritten.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mailbox
import os
import socket
import time
from collections.abc import Iterable, Iterator
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

from triage.errors import MailboxError
from triage.mailbox import SOURCE_HEADER, Incoming

log = logging.getLogger(__name__)

INBOX = "INBOX"
DRAFTS = "Drafts"
SENT = "Sent"
OUTBOX = "Outbox"
# A Maildir has no UIDVALIDITY; its keys never change, so one constant value stands for it.
MAILDIR_UIDVALIDITY = 1
# Unique delivery names: time, microseconds, pid, a counter and the host (Maildir spec).
_COUNTER = itertools.count(1)
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
# How often wait() looks at new/ for mail delivered by another program.
_WAIT_STEP_SECONDS = 0.25


def _key_order(key: str) -> tuple[int, str]:
    """Delivery order: Maildir keys start with the delivery time in seconds."""
    head = key.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, key)


class LocalMailbox:
    """A Maildir++ tree on disk, behind the same interface as the IMAP mailbox."""

    def __init__(self, root: Path, *, folder: str = INBOX) -> None:
        self.root = Path(root)
        self.folder = folder
        try:
            self._root = mailbox.Maildir(self.root, factory=None, create=True)
            self._watched = self._folder(folder)
        except OSError as exc:
            raise MailboxError(
                f"maildir {self.root}: cannot open ({exc.strerror}); check TRIAGE_MAILDIR"
            ) from exc

    @property
    def description(self) -> str:
        return f"maildir {self.root}/"

    def _folder(self, name: str) -> mailbox.Maildir:
        if name.upper() == INBOX:
            return self._root
        try:
            return self._root.get_folder(name)
        except mailbox.NoSuchMailboxError:
            return self._root.add_folder(name)

    def folder_path(self, name: str) -> Path:
        """The directory of a folder: the root for INBOX, ``.Name`` beside it otherwise."""
        return self.root if name.upper() == INBOX else self.root / f".{name}"

    def keys(self) -> tuple[int, list[str]]:
        return MAILDIR_UIDVALIDITY, sorted(self._watched.keys(), key=_key_order)

    def fetch(self, uids: Iterable[str]) -> Iterator[Incoming]:
        for uid in uids:
            try:
                raw = self._watched.get_bytes(uid)
            except KeyError:  # removed by someone else since keys(): nothing to handle
                log.warning("maildir key %s vanished before it was read", uid)
                continue
            yield Incoming(self.folder, MAILDIR_UIDVALIDITY, uid, raw)

    def add(self, raw: bytes, *, folder: str = INBOX, flags: str = "") -> str:
        """Deliver raw bytes into a folder byte for byte (``new/``, or ``cur/`` with flags).

        Written to ``tmp/`` and renamed, as the Maildir spec asks; the stdlib's ``add`` would
        rewrite line endings.
        """
        self._folder(folder)
        directory = self.folder_path(folder)
        now = time.time()
        key = f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_COUNTER)}.{_HOST}"
        tmp = directory / "tmp" / key
        with open(tmp, "xb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        target = (
            directory
            / ("cur" if flags else "new")
            / (f"{key}:2,{''.join(sorted(flags))}" if flags else key)
        )
        os.rename(tmp, target)
        return key

    def wait(self, timeout: float) -> None:
        new_dir = self.folder_path(self.folder) / "new"
        before = new_dir.stat().st_mtime_ns if new_dir.exists() else 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(min(_WAIT_STEP_SECONDS, max(0.0, deadline - time.monotonic())))
            if new_dir.exists() and new_dir.stat().st_mtime_ns != before:
                return

    def save_draft(self, message: EmailMessage) -> str:
        key = self.add(message.as_bytes(), folder=DRAFTS, flags="DS")
        return f"{self.folder_path(DRAFTS)}/cur/{key}:2,DS"

    def find_draft(self, source_message_id: str) -> bool:
        return self._holds(DRAFTS, source_message_id)

    def _holds(self, folder: str, source_message_id: str) -> bool:
        parser = BytesHeaderParser()
        directory = self.folder_path(folder)
        for sub in ("cur", "new"):
            path = directory / sub
            if not path.is_dir():
                continue
            with os.scandir(path) as entries:
                for entry in entries:
                    with open(entry.path, "rb") as fh:
                        headers = parser.parse(fh)
                    if headers.get(SOURCE_HEADER, "").strip() == source_message_id:
                        return True
        return False

    def _path_of(self, incoming: Incoming) -> Path:
        directory = self.folder_path(incoming.folder)
        for sub in ("new", "cur"):
            with os.scandir(directory / sub) as entries:
                for entry in entries:
                    if entry.name == incoming.uid or entry.name.startswith(incoming.uid + ":"):
                        return Path(entry.path)
        raise MailboxError(f"maildir {directory}: no message {incoming.uid}; was it moved?")

    def mark(self, incoming: Incoming, keywords: Iterable[str], *, flagged: bool = False) -> None:
        # Maildir has no keywords of its own; the journal records them. \Flagged is the "F" flag,
        # set by renaming into cur/ (the content is not touched).
        if not flagged:
            return
        path = self._path_of(incoming)
        info = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
        flags = "".join(sorted(set(info) | {"F"}))
        target = path.parent.parent / "cur" / f"{incoming.uid}:2,{flags}"
        os.rename(path, target)

    def move(self, incoming: Incoming, folder: str) -> None:
        path = self._path_of(incoming)
        self._folder(folder)  # create it when missing
        target = self.folder_path(folder) / path.parent.name / path.name
        os.rename(path, target)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._root.close()

    # --- staff review and the learning loop (``triage review``, ``triage learn``) ---------------

    def _files(self, folder: str) -> list[Path]:
        """The message files of a folder, oldest delivery first (none if it does not exist)."""
        directory = self.folder_path(folder)
        found = [
            path
            for sub in ("new", "cur")
            if (directory / sub).is_dir()
            for path in (directory / sub).iterdir()
            if path.is_file() and not path.name.startswith(".")
        ]
        return sorted(found, key=lambda path: _key_order(path.name.split(":", 1)[0]))

    def _header(self, path: Path, name: str) -> str:
        with open(path, "rb") as fh:
            return " ".join(str(BytesHeaderParser().parse(fh).get(name, "")).split())

    def _drafts_for(self, source_message_id: str) -> list[Path]:
        wanted = " ".join(source_message_id.split())
        if not wanted:
            raise ValueError("a draft is found by a Message-ID; an empty one matches every draft")
        return [p for p in self._files(DRAFTS) if self._header(p, SOURCE_HEADER) == wanted]

    def get_draft(self, source_message_id: str) -> bytes | None:
        """The newest draft whose ``X-Triage-Source`` is this Message-ID, as raw bytes."""
        paths = self._drafts_for(source_message_id)
        return paths[-1].read_bytes() if paths else None

    def delete_draft(self, source_message_id: str) -> int:
        """Remove every draft whose ``X-Triage-Source`` is this Message-ID; how many there were."""
        paths = self._drafts_for(source_message_id)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):  # a mail program removed it meanwhile
                path.unlink()
        return len(paths)

    def subfolder(self, *parts: str) -> str:
        """A folder name from its hierarchy parts: ``Triage.events`` (Maildir++ uses dots)."""
        return ".".join(parts)

    def has_folder(self, name: str) -> bool:
        return name.upper() == INBOX or (self.folder_path(name) / "cur").is_dir()

    def create_folder(self, name: str) -> bool:
        """Create a folder (``.Name`` beside INBOX); False when it was there already."""
        existed = self.has_folder(name)
        if not existed:
            self._folder(name)
        return not existed

    def read_folder(self, name: str) -> Iterator[Incoming]:
        """Every message of a folder, oldest first, read without changing it."""
        for path in self._files(name):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # moved by a mail program since the listing
                continue
            yield Incoming(name, MAILDIR_UIDVALIDITY, path.name.split(":", 1)[0], raw)

    def sent_folder(self) -> str:
        return SENT

    def save_sent(self, raw: bytes) -> str:
        """File a copy of a sent message in ``.Sent`` (seen); say where it went."""
        key = self.add(raw, folder=SENT, flags="S")
        return f"{self.folder_path(SENT)}/cur/{key}:2,S"

    def holds(self, folder: str, message_id: str) -> bool:
        """Whether ``folder`` holds a message with this Message-ID."""
        wanted = " ".join(message_id.split())
        if not wanted:
            raise ValueError("holds needs a Message-ID; an empty one matches every message")
        return any(self._header(p, "Message-ID") == wanted for p in self._files(folder))

    def fetch_original(
        self, folder: str, uidvalidity: int, uid: str, message_id: str = ""
    ) -> Incoming | None:
        """A message by its key in ``folder`` (Maildir keys survive a move between folders), else
        the one there with this Message-ID; None when it is in neither place."""
        if not self.has_folder(folder):
            return None
        wanted = " ".join(message_id.split())
        for path in self._files(folder):
            if path.name.split(":", 1)[0] == uid:
                return Incoming(folder, MAILDIR_UIDVALIDITY, uid, path.read_bytes())
        if wanted:
            for path in self._files(folder):
                if self._header(path, "Message-ID") == wanted:
                    key = path.name.split(":", 1)[0]
                    return Incoming(folder, MAILDIR_UIDVALIDITY, key, path.read_bytes())
        return None


__all__ = ["DRAFTS", "INBOX", "MAILDIR_UIDVALIDITY", "OUTBOX", "SENT", "LocalMailbox"]
