"""Message in / out over IMAP: ``ImapMailbox``, the Mailbox of a real server, through imapclient.

The connection is opened lazily, on the first call that needs the server (or by ``connect()``,
to check the settings early); the constructor only checks the settings and never touches the
network. A lost connection is dropped and reopened on the next call. Calls that are safe to
repeat (``keys``, ``fetch``, ``find_draft``, ``mark``, ``ensure_folder``) retry once on a fresh
connection; ``save_draft``, ``append`` and ``move`` do not, since the first attempt may have
reached the server. ``wait`` reconnects by itself, retrying until its timeout is used up.

With ``max_message_bytes``, ``fetch`` asks for every message's RFC822.SIZE first and downloads
only the header of a larger one (``Incoming.truncated``), never its body.
"""

from __future__ import annotations

import imaplib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError

from triage.errors import ConfigError, MailboxError
from triage.mailbox import SOURCE_HEADER, Incoming

log = logging.getLogger(__name__)

T = TypeVar("T")
Tls = Literal["ssl", "starttls", "none"]

TLS_MODES: tuple[Tls, ...] = ("ssl", "starttls", "none")
# IANA: imaps is 993, imap (plain, or upgraded with STARTTLS) is 143.
DEFAULT_PORTS: dict[str, int] = {"ssl": 993, "starttls": 143, "none": 143}
# UIDs per UID FETCH: keeps command lines short and at most this many bodies in memory.
FETCH_BATCH = 100
# Of a message above ``max_message_bytes``, only this much of its header is fetched
# (BODY.PEEK[HEADER]<0.N>): enough for From, Subject and Message-ID even behind a long Received
# chain, and a 1 MB header is not downloaded either (issue 7: "without downloading the body").
HEADER_FETCH_BYTES = 65536
# RFC 2177: a client should re-issue IDLE at least every 29 minutes, or the server may log it out.
IDLE_LIMIT_SECONDS = 29 * 60 - 60
# While IDLE, how often wait() looks at its stop event (SIGTERM ends a wait this fast).
STOP_CHECK_SECONDS = 0.25
# Pauses between reconnect attempts in wait(): doubling from 0.25 s (a Dovecot restart takes
# about 0.1 s) up to 30 s.
RECONNECT_FIRST_PAUSE = 0.25
RECONNECT_MAX_PAUSE = 30.0
# A flag or keyword is an IMAP atom (RFC 3501 section 9: no specials, spaces, controls or 8-bit),
# with a leading backslash for system flags.
_FLAG = re.compile(r"\\?[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")
# Message-IDs imapclient can send as a search string without a literal (it quotes " and \).
_SEARCHABLE = re.compile(r"[\x20-\x7e]+")
_UNSAFE_IN_SEARCH = re.compile(r"[(){%*\]]")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
# RFC 4315: after MULTIAPPEND, APPENDUID carries a set of UIDs, in the order of the messages.
_APPENDUID_SET = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]")
# Dovecot appends timings to every tagged reply: "... (0.001 + 0.000 secs)."
_TIMING = re.compile(r"\s*\(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)\.?$")

_DRAFT = b"\\Draft"
_SEEN = b"\\Seen"
_FLAGGED = b"\\Flagged"
_DELETED = b"\\Deleted"

# The connection is gone or out of step: drop it (imaplib.IMAP4.abort, socket and TLS errors,
# timeouts). Caught before imaplib.IMAP4.error, of which abort is a subclass.
_LOST = (imaplib.IMAP4.abort, OSError)


class ImapMailbox:
    """The Mailbox of one IMAP account: watches ``folder``, writes drafts to the Drafts folder."""

    def __init__(
        self,
        host: str,
        port: int | None,
        user: str,
        password: str,
        *,
        tls: Tls = "ssl",
        ca_file: Path | None = None,
        folder: str = "INBOX",
        drafts_folder: str = "Drafts",
        timeout: float = 30.0,
        idle_seconds: float = 300.0,
        poll_seconds: float = 60.0,
        max_message_bytes: int | None = None,
    ) -> None:
        if tls not in TLS_MODES:
            raise ConfigError(f"TRIAGE_IMAP_TLS={tls!r}: use ssl, starttls or none")
        if tls == "none" and not _is_loopback(host):
            raise ConfigError(
                f"TRIAGE_IMAP_TLS=none would send the password to {host} in clear text; "
                "it is only allowed to 127.0.0.1, ::1 or localhost: use ssl or starttls"
            )
        if timeout <= 0 or idle_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("timeout, idle_seconds and poll_seconds must be positive")
        if max_message_bytes is not None and max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive (or None: no limit)")
        self.host = host
        self.port = port if port is not None else DEFAULT_PORTS[tls]
        self.user = user
        self._password = password
        self.tls: Tls = tls
        self.folder = folder
        self.drafts_folder = drafts_folder
        self.timeout = timeout
        self.idle_seconds = min(idle_seconds, IDLE_LIMIT_SECONDS)
        self.poll_seconds = poll_seconds
        self.max_message_bytes = max_message_bytes  # None: every message is fetched whole
        self._ssl_context = _ssl_context(ca_file) if tls != "none" else None
        self._client: Any = None  # IMAPClient, or None when not connected
        self._reset_state()
        self._last_keys: tuple[int, int | None] | None = None  # (UIDVALIDITY, UIDNEXT) at keys()

    def _reset_state(self) -> None:
        """Forget what belongs to one connection."""
        self._selected: tuple[str, bool] | None = None
        self._select_info: dict[bytes, Any] = {}
        self._delimiter: str | None = None
        self._delimiter_known = False
        self._special: dict[bytes, str | None] = {}
        self._existing: set[str] = set()  # folders seen or created on this connection
        self._warned_keywords = False

    # --- the Mailbox protocol ------------------------------------------------------------------

    @property
    def description(self) -> str:
        return f"imap {self.user}@{self._where}"

    def keys(self) -> tuple[int, list[str]]:
        """UIDVALIDITY and the UIDs of the watched folder's messages not marked ``\\Deleted``."""

        def keys(client: Any) -> tuple[int, list[str]]:
            info = self._select(client, self.folder, force=True)
            uidvalidity = self._uidvalidity(info, self.folder)
            uids = sorted(int(uid) for uid in client.search(["UNDELETED"]))
            self._last_keys = (uidvalidity, info.get(b"UIDNEXT"))
            return uidvalidity, [str(uid) for uid in uids]

        return self._call(f"list the messages in {self.folder!r}", keys, idempotent=True)

    def fetch(self, uids: Iterable[str]) -> Iterator[Incoming]:
        """The raw messages of the watched folder with these UIDs, in UID order (BODY.PEEK[]).

        With ``max_message_bytes``, a message larger than that (RFC822.SIZE, asked first) comes
        with only the first ``HEADER_FETCH_BYTES`` of its header, ``truncated`` and its ``size``
        set: its body is never downloaded. UIDs that are no longer there are left out. Other
        calls may run between two messages: each batch selects the watched folder again.
        """
        wanted = sorted({_uid(uid) for uid in uids})
        for start in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[start : start + FETCH_BATCH]
            found = self._call(
                f"fetch messages from {self.folder!r}",
                partial(self._fetch_batch, batch=batch),
                idempotent=True,
            )
            for uid in batch:
                if uid not in found:
                    log.debug("uid=%s no longer in %s", uid, self.folder)
                    continue
                yield found[uid]

    def wait(self, timeout: float, *, stop: threading.Event | None = None) -> None:
        """Return when new mail may have come (IDLE push), or after up to ``timeout`` seconds,
        or soon (within ``STOP_CHECK_SECONDS``) after ``stop`` is set.

        With IDLE, waits at most ``idle_seconds`` (under RFC 2177's 29 minutes; the caller calls
        again). Without IDLE, sleeps ``min(timeout, poll_seconds)``. A connection lost while
        waiting (server restart, imapclient issue #519) is reopened before returning, trying
        again until ``timeout`` is used up; MailboxError if it still cannot be.
        """
        if timeout <= 0 or (stop is not None and stop.is_set()):
            return
        deadline = time.monotonic() + timeout
        client = self._connected()
        if not client.has_capability("IDLE"):
            pause = min(timeout, self.poll_seconds)
            if stop is None:
                time.sleep(pause)
            else:
                stop.wait(pause)
            return
        try:
            # SELECT again: mail that came since keys() (announced during other commands,
            # where imapclient does not report it) shows as a new UIDNEXT and returns at once.
            info = self._select(client, self.folder, force=True)
            now = (self._uidvalidity(info, self.folder), info.get(b"UIDNEXT"))
            if self._last_keys is not None and now != self._last_keys:
                log.debug("%s changed since the last look; not idling", self.folder)
                return
            self._idle(client, min(timeout, self.idle_seconds), stop)
        except _LOST as exc:
            log.warning("%s: connection lost while waiting (%s); reconnecting", self._where, exc)
            self._reconnect_until(deadline)
        except imaplib.IMAP4.error as exc:
            self._drop()  # IDLE state unknown
            raise self._command_error("wait for new mail", exc) from exc
        except MailboxError:
            raise
        except BaseException:
            self._drop()  # e.g. KeyboardInterrupt in the middle of IDLE
            raise

    def save_draft(self, message: EmailMessage) -> str:
        """APPEND to Drafts with ``\\Draft`` and ``\\Seen``; say where it went: "Drafts uid 7"."""
        folder = self.special_folder(b"\\Drafts", self.drafts_folder)
        return self.append(folder, _as_bytes(message), flags=(_DRAFT, _SEEN))

    def save_drafts(self, messages: Sequence[EmailMessage]) -> list[str]:
        """``save_draft`` for many drafts in one MULTIAPPEND (RFC 3502: all are stored or none
        is); where each went, in order. One round trip instead of one per draft."""
        folder = self.special_folder(b"\\Drafts", self.drafts_folder)
        return self.append_many(folder, [_as_bytes(m) for m in messages], flags=(_DRAFT, _SEEN))

    def mark_many(
        self, originals: Sequence[Incoming], keywords: Iterable[str], *, flagged: bool = False
    ) -> None:
        """``mark`` for many originals of one folder: one UID STORE for them all."""
        flags = [_flag(keyword) for keyword in keywords]
        if flagged:
            flags.append(_FLAGGED)
        if not flags or not originals:
            return
        first = originals[0]
        if any((o.folder, o.uidvalidity) != (first.folder, first.uidvalidity) for o in originals):
            raise ValueError("mark_many marks messages of one folder and UIDVALIDITY")

        def mark(client: Any) -> None:
            self._select_for(client, first)
            uids = [int(o.uid) for o in originals]
            stored = client.add_flags(uids, flags)
            missing = [uid for uid in uids if uid not in stored]
            if missing:  # flags already there (Dovecot is silent then), or the message is gone
                present = set(client.search(["UID", ",".join(map(str, missing))]))
                for original in originals:
                    if int(original.uid) in missing and int(original.uid) not in present:
                        raise self._gone(original)

        self._call(f"flag {len(originals)} messages in {first.folder!r}", mark, idempotent=True)

    def find_draft(self, source_message_id: str) -> bool:
        """Whether Drafts holds a message (not ``\\Deleted``) with this ``X-Triage-Source``."""
        wanted = " ".join(source_message_id.split())
        if not wanted:
            raise ValueError("find_draft needs a Message-ID; an empty one matches every draft")

        def find(client: Any) -> bool:
            folder = self._special_folder(client, b"\\Drafts", self.drafts_folder)
            return self._has_header(client, folder, SOURCE_HEADER, wanted)

        return self._call("look for a draft", find, idempotent=True)

    def holds(self, folder: str, message_id: str) -> bool:
        """Whether ``folder`` holds a message (not ``\\Deleted``) with this Message-ID."""
        wanted = " ".join(message_id.split())
        if not wanted:
            raise ValueError("holds needs a Message-ID; an empty one matches every message")
        return self._call(
            f"look in {folder!r}",
            lambda client: self._has_header(client, folder, "Message-ID", wanted),
            idempotent=True,
        )

    def _has_header(self, client: Any, folder: str, name: str, wanted: str) -> bool:
        if not client.folder_exists(folder):
            return False
        self._select(client, folder, readonly=True)
        # HEADER is a substring match; ids with characters that do not survive as a search
        # string are found by the header alone. Either way the header is compared exactly.
        if _SEARCHABLE.fullmatch(wanted) and not _UNSAFE_IN_SEARCH.search(wanted):
            needle = wanted
        else:
            needle = ""
        uids = client.search(["UNDELETED", "HEADER", name, needle])
        if not uids:
            return False
        section = f"BODY.PEEK[HEADER.FIELDS ({name.upper()})]"
        for data in client.fetch(uids, [section]).values():
            for key, value in data.items():
                if not key.startswith(b"BODY[HEADER") or not value:
                    continue
                header = BytesHeaderParser().parsebytes(bytes(value))
                for found in header.get_all(name) or ():
                    if " ".join(str(found).split()) == wanted:
                        return True
        return False

    def mark(self, incoming: Incoming, keywords: Iterable[str], *, flagged: bool = False) -> None:
        """UID STORE +FLAGS: ``keywords`` (and ``\\Flagged``) on the original in its folder."""
        flags = [_flag(keyword) for keyword in keywords]
        if flagged:
            flags.append(_FLAGGED)
        if not flags:
            return

        def mark(client: Any) -> None:
            info = self._select_for(client, incoming)
            has_keywords = any(not flag.startswith(b"\\") for flag in flags)
            permanent = info.get(b"PERMANENTFLAGS", (b"\\*",))
            if has_keywords and b"\\*" not in permanent and not self._warned_keywords:
                self._warned_keywords = True
                log.warning("%s: %s does not keep new keywords", self._where, incoming.folder)
            uid = int(incoming.uid)
            stored = client.add_flags([uid], flags)
            # No FETCH back: either the flags were already there (Dovecot is silent then) or
            # the message is gone; STORE on a missing UID succeeds quietly, so look.
            if uid not in stored and not client.search(["UID", str(uid)]):
                raise self._gone(incoming)

        self._call(f"flag uid {incoming.uid} in {incoming.folder!r}", mark, idempotent=True)

    def move(self, incoming: Incoming, folder: str) -> None:
        """Move the original to ``folder`` (created when missing): MOVE, else COPY and EXPUNGE."""
        if folder == incoming.folder:
            return
        self.ensure_folder(folder)

        def move(client: Any) -> None:
            self._select_for(client, incoming)
            uid = int(incoming.uid)
            if not client.search(["UID", str(uid)]):
                raise self._gone(incoming)
            if client.has_capability("MOVE"):
                client.move([uid], folder)
                return
            client.copy([uid], folder)
            client.add_flags([uid], [_DELETED], silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge([uid])
            else:
                # Without UIDPLUS, EXPUNGE also removes other messages already marked \Deleted.
                client.expunge()

        # Not retried: a MOVE whose reply was lost may have happened.
        self._call(f"move uid {incoming.uid} to {folder!r}", move, idempotent=False)

    def close(self) -> None:
        """LOGOUT, ignoring a connection that is already gone."""
        client, self._client = self._client, None
        self._reset_state()
        if client is None:
            return
        try:
            client.logout()
        except Exception as exc:  # the server may be gone: nothing left to tidy but the socket
            log.debug("%s: logout failed: %s", self._where, exc)
            _shutdown(client)

    # --- more than the protocol ----------------------------------------------------------------

    def connect(self) -> None:
        """Connect and log in now, if not connected yet: checks host, TLS and login early."""
        self._connected()

    def reconnect(self) -> None:
        """Drop the connection without LOGOUT (it is usually dead) and connect again."""
        self._drop()
        self._connected()

    def _reconnect_until(self, deadline: float) -> None:
        """Reconnect; while the server is unreachable (restarting), try again with growing
        pauses until ``deadline``. Login and TLS failures are not retried."""
        pause = RECONNECT_FIRST_PAUSE
        while True:
            try:
                self.reconnect()
                return
            except MailboxError as exc:
                cause = exc.__cause__
                transient = isinstance(cause, _LOST) and not isinstance(cause, ssl.SSLError)
                if not transient or time.monotonic() + pause > deadline:
                    raise
                log.info("%s; trying again in %.2f s", exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX_PAUSE)

    def append(self, folder: str, msg_bytes: bytes, flags: Sequence[str | bytes] = ()) -> str:
        """APPEND a raw message to ``folder`` (created when missing): "Sent uid 3", or "Sent"."""
        checked = [_flag(flag) for flag in flags]
        self.ensure_folder(folder)
        try:
            reply = self._call(
                f"save a message in {folder!r}",
                lambda client: client.append(folder, msg_bytes, flags=checked),
                idempotent=False,
            )
        except MailboxError:
            self._existing.discard(folder)  # perhaps deleted meanwhile: look again next time
            raise
        match = _APPENDUID.search(reply or b"")
        where = f"{folder} uid {int(match[2])}" if match else folder
        log.debug("appended %d bytes to %s", len(msg_bytes), where)
        return where

    def append_many(
        self, folder: str, raws: Sequence[bytes], flags: Sequence[str | bytes] = ()
    ) -> list[str]:
        """APPEND many raw messages in one MULTIAPPEND (one by one without the capability):
        where each went, in order ("Drafts uid 7"; the folder alone if the server does not say)."""
        if not raws:
            return []
        checked = [_flag(flag) for flag in flags]
        self.ensure_folder(folder)
        if not self._call(
            "check capabilities", lambda c: c.has_capability("MULTIAPPEND"), idempotent=True
        ):
            return [self.append(folder, raw, flags=checked) for raw in raws]
        try:
            reply = self._call(
                f"save {len(raws)} messages in {folder!r}",
                lambda client: client.multiappend(
                    folder, [{"msg": raw, "flags": checked} for raw in raws]
                ),
                idempotent=False,
            )
        except MailboxError:
            self._existing.discard(folder)
            raise
        text = b" ".join(x for x in _flatten(reply) if isinstance(x, bytes))
        match = _APPENDUID_SET.search(text)
        uids = _uid_set(match[2].decode()) if match else []
        if len(uids) != len(raws):
            return [folder] * len(raws)
        log.debug("appended %d messages to %s", len(raws), folder)
        return [f"{folder} uid {uid}" for uid in uids]

    def ensure_folder(self, name: str) -> None:
        """Create ``name`` and any missing parents (split at the server's delimiter); subscribe."""

        def ensure(client: Any) -> None:
            if name in self._existing or client.folder_exists(name):
                self._existing.add(name)
                return
            delimiter = self._hierarchy_delimiter(client)
            parts = name.split(delimiter) if delimiter else [name]
            for depth in range(1, len(parts) + 1):
                path = delimiter.join(parts[:depth]) if delimiter else name
                if client.folder_exists(path):
                    continue
                try:
                    client.create_folder(path)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error:
                    if not client.folder_exists(path):  # else someone else just created it
                        raise
                log.info("%s: created folder %s", self._where, path)
            self._existing.add(name)
            try:
                client.subscribe_folder(name)  # so mail clients that show subscribed folders do
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                log.debug("%s: subscribe %s failed: %s", self._where, name, exc)

        self._call(f"create folder {name!r}", ensure, idempotent=True)

    def special_folder(self, use: bytes, default: str) -> str:
        """The folder with this SPECIAL-USE flag (``b"\\\\Sent"``), else ``default``, created if
        missing."""
        name = self._call(
            "list folders",
            lambda client: self._special_folder(client, use, default),
            idempotent=True,
        )
        self.ensure_folder(name)
        return name

    @property
    def delimiter(self) -> str | None:
        """The server's hierarchy delimiter (``/`` or ``.``), or None for a flat namespace."""
        return self._call("list folders", self._hierarchy_delimiter, idempotent=True)

    def folder_path(self, *parts: str) -> str:
        """A folder name from its hierarchy parts, joined with the server's delimiter."""
        delimiter = self.delimiter
        if delimiter is None:
            if len(parts) > 1:
                raise MailboxError(f"{self._where}: folders cannot nest on this server")
            return parts[0]
        return delimiter.join(parts)

    def __enter__(self) -> ImapMailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImapMailbox {self.description} folder={self.folder!r} tls={self.tls}>"

    # --- connection ----------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _connected(self) -> Any:
        if self._client is None:
            self._client = self._open()
            self._reset_state()
        return self._client

    def _open(self) -> Any:
        where = f"imap {self._where}"
        try:
            client = IMAPClient(
                self.host,
                self.port,
                ssl=self.tls == "ssl",
                ssl_context=self._ssl_context,
                timeout=self.timeout,
            )
        except Exception as exc:
            raise self._connect_error(exc) from exc
        try:
            if self.tls == "starttls":
                client.starttls(self._ssl_context)
            client.login(self.user, self._password)
        except LoginError as exc:
            _shutdown(client)
            reason = _server_text(exc).removeprefix("login failed: ")
            detail = "" if "[AUTHENTICATIONFAILED]" in reason or not reason else f" ({reason})"
            raise MailboxError(
                f"{where}: login failed for {self.user}{detail}: "
                "check TRIAGE_IMAP_USER and TRIAGE_IMAP_PASSWORD"
            ) from exc
        except CapabilityError as exc:
            _shutdown(client)
            raise MailboxError(
                f"{where}: the server does not offer STARTTLS: check TRIAGE_IMAP_TLS "
                "(ssl for port 993) and TRIAGE_IMAP_PORT"
            ) from exc
        except Exception as exc:
            _shutdown(client)
            raise self._connect_error(exc) from exc
        log.info("%s: logged in as %s (tls=%s)", self._where, self.user, self.tls)
        return client

    def _connect_error(self, exc: BaseException) -> MailboxError:
        where = f"imap {self._where}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return MailboxError(
                f"{where}: TLS certificate not trusted ({exc.verify_message}): set "
                "TRIAGE_IMAP_CA_FILE to the CA certificate that signed the server's, or check "
                "that TRIAGE_IMAP_HOST is the name in the certificate"
            )
        if isinstance(exc, ssl.SSLError):
            return MailboxError(
                f"{where}: TLS handshake failed ({exc.reason or exc}): check TRIAGE_IMAP_TLS "
                "(ssl on port 993, starttls on 143) and TRIAGE_IMAP_PORT"
            )
        if isinstance(exc, socket.gaierror):
            return MailboxError(
                f"{where}: cannot resolve {self.host!r} ({exc.strerror}): check TRIAGE_IMAP_HOST"
            )
        if isinstance(exc, ConnectionRefusedError):
            return MailboxError(
                f"{where}: connection refused: check TRIAGE_IMAP_HOST and TRIAGE_IMAP_PORT, "
                "and that the server is running"
            )
        if isinstance(exc, TimeoutError):
            return MailboxError(
                f"{where}: no answer within {self.timeout:g} s: check TRIAGE_IMAP_HOST, "
                "TRIAGE_IMAP_PORT and TRIAGE_IMAP_TLS"
            )
        if isinstance(exc, OSError):
            return MailboxError(
                f"{where}: cannot connect ({exc.strerror or exc}): check TRIAGE_IMAP_HOST "
                "and TRIAGE_IMAP_PORT"
            )
        return MailboxError(
            f"{where}: unexpected reply while connecting ({_server_text(exc)}): check that "
            "TRIAGE_IMAP_PORT is an IMAP port and TRIAGE_IMAP_TLS matches it"
        )

    def _drop(self) -> None:
        """Forget the connection without a word to the server; the next call opens a new one."""
        client, self._client = self._client, None
        self._reset_state()
        if client is not None:
            _shutdown(client)

    def _call(self, what: str, operation: Callable[[Any], T], *, idempotent: bool) -> T:
        """Run ``operation(client)``; wrap failures in MailboxError; after a lost connection,
        reconnect and retry once when the operation is safe to repeat and the connection was an
        old one (a server that drops a fresh connection is not retried)."""
        fresh = self._client is None
        client = self._connected()
        try:
            return operation(client)
        except _LOST as exc:
            self._drop()
            if not idempotent or fresh:
                raise self._lost_error(what, exc) from exc
            log.info("%s: connection lost (%s); reconnecting to %s", self._where, exc, what)
        except imaplib.IMAP4.error as exc:
            raise self._command_error(what, exc) from exc
        client = self._connected()
        try:
            return operation(client)
        except _LOST as exc:
            self._drop()
            raise self._lost_error(what, exc) from exc
        except imaplib.IMAP4.error as exc:
            raise self._command_error(what, exc) from exc

    def _lost_error(self, what: str, exc: BaseException) -> MailboxError:
        reason = _server_text(exc) or exc.__class__.__name__
        return MailboxError(
            f"imap {self._where}: connection lost while trying to {what} ({reason}): "
            "check that the server is up; the next call reconnects"
        )

    def _command_error(self, what: str, exc: BaseException) -> MailboxError:
        return MailboxError(f"imap {self._where}: could not {what}: {_server_text(exc)}")

    # --- folders -------------------------------------------------------------------------------

    def _select(
        self, client: Any, folder: str, *, readonly: bool = False, force: bool = False
    ) -> dict[bytes, Any]:
        if not force and self._selected == (folder, readonly):
            return self._select_info
        self._selected = None
        try:
            info = client.select_folder(folder, readonly=readonly)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            hint = "check TRIAGE_IMAP_FOLDER" if folder == self.folder else "check the folder name"
            text = _server_text(exc).removeprefix("select failed: ")
            raise MailboxError(
                f"imap {self._where}: no folder {folder!r} for {self.user} ({text}): {hint}"
            ) from exc
        self._selected = (folder, readonly)
        self._select_info = dict(info)
        return self._select_info

    def _select_for(self, client: Any, incoming: Incoming) -> dict[bytes, Any]:
        """Select the original's folder read-write, checking its UIDVALIDITY still holds."""
        info = self._select(client, incoming.folder)
        uidvalidity = self._uidvalidity(info, incoming.folder)
        if uidvalidity != incoming.uidvalidity:
            raise MailboxError(
                f"imap {self._where}: {incoming.folder!r} has UIDVALIDITY {uidvalidity}, not "
                f"{incoming.uidvalidity}: uid {incoming.uid} may now be another message, so it "
                "was left alone"
            )
        return info

    def _uidvalidity(self, info: dict[bytes, Any], folder: str) -> int:
        value = info.get(b"UIDVALIDITY")
        if value is None:
            raise MailboxError(f"imap {self._where}: the server gave no UIDVALIDITY for {folder!r}")
        return int(value)

    def _fetch_batch(self, client: Any, batch: list[int]) -> dict[int, Incoming]:
        """One UID FETCH of whole messages; with a size limit, one of RFC822.SIZE first, and
        the header alone of those above the limit."""
        info = self._select(client, self.folder)
        uidvalidity = self._uidvalidity(info, self.folder)
        limit = self.max_message_bytes
        sizes: dict[int, int] = {}
        whole, large = batch, []
        if limit is not None:
            for uid, data in client.fetch(batch, [b"RFC822.SIZE"]).items():
                if data.get(b"RFC822.SIZE") is not None:
                    sizes[int(uid)] = int(data[b"RFC822.SIZE"])
            whole = [uid for uid in batch if uid in sizes and sizes[uid] <= limit]
            large = [uid for uid in batch if uid in sizes and sizes[uid] > limit]
        found: dict[int, Incoming] = {}
        if whole:
            for uid, data in client.fetch(whole, [b"BODY.PEEK[]"]).items():
                raw = data.get(b"BODY[]")
                if raw is not None:
                    size = sizes.get(int(uid), len(raw))
                    found[int(uid)] = Incoming(
                        self.folder, uidvalidity, str(uid), bytes(raw), size=size
                    )
        if large:
            section = f"BODY.PEEK[HEADER]<0.{HEADER_FETCH_BYTES}>".encode()
            for uid, data in client.fetch(large, [section]).items():
                header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER]")), None)
                if header is None:
                    continue
                log.debug(
                    "uid=%s is %d bytes, above the limit of %d: its header only",
                    uid,
                    sizes[int(uid)],
                    limit,
                )
                found[int(uid)] = Incoming(
                    self.folder,
                    uidvalidity,
                    str(uid),
                    bytes(header),
                    size=sizes[int(uid)],
                    truncated=True,
                )
        return found

    def _gone(self, incoming: Incoming) -> MailboxError:
        return MailboxError(
            f"imap {self._where}: no message uid {incoming.uid} in {incoming.folder!r} any more "
            "(moved or deleted by someone else?)"
        )

    def _hierarchy_delimiter(self, client: Any) -> str | None:
        if not self._delimiter_known:
            # LIST "" "" answers with the delimiter of the root (RFC 3501 section 6.3.8).
            listing = client.list_folders("", "")
            raw = listing[0][1] if listing else None
            self._delimiter = raw.decode() if isinstance(raw, bytes) else raw
            self._delimiter_known = True
        return self._delimiter

    def _special_folder(self, client: Any, use: bytes, default: str) -> str:
        if use not in self._special:
            self._special[use] = client.find_special_folder(use)
        return self._special[use] or default

    # --- IDLE ----------------------------------------------------------------------------------

    def _idle(self, client: Any, seconds: float, stop: threading.Event | None = None) -> None:
        """IDLE up to ``seconds``; return early on EXISTS or RECENT, or once ``stop`` is set.
        Raises on a lost connection."""
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        step = STOP_CHECK_SECONDS if stop is not None else seconds
        while time.monotonic() < deadline:
            client.idle()
            new_mail = False
            while (remaining := deadline - time.monotonic()) > 0:
                if stop is not None and stop.is_set():
                    break
                slice_ = min(remaining, step)
                checked = time.monotonic()
                responses = client.idle_check(timeout=slice_)
                if any(_is_bye(r) for r in responses):
                    raise imaplib.IMAP4.abort("the server said BYE")
                if any(_is_new_mail(r) for r in responses):
                    new_mail = True
                    break
                if not responses and time.monotonic() - checked < slice_ - 0.05:
                    # Readable but no whole line: end of file, or only a TLS record. DONE
                    # tells which: it raises on a dead connection.
                    break
            _text, responses = client.idle_done()
            if new_mail or any(_is_new_mail(r) for r in responses):
                log.debug("new mail after %.3f s of IDLE", time.monotonic() - started)
                return
            if stop is not None and stop.is_set():
                return

    # --- staff review and the learning loop (``triage review``, ``triage learn``) ---------------

    def _uids_with_header(self, client: Any, name: str, wanted: str) -> list[int]:
        """UIDs (not ``\\Deleted``) in the selected folder whose header ``name`` is exactly
        ``wanted``; HEADER search narrows, the fetched header decides (as ``_has_header``)."""
        if _SEARCHABLE.fullmatch(wanted) and not _UNSAFE_IN_SEARCH.search(wanted):
            needle = wanted
        else:
            needle = ""
        uids = client.search(["UNDELETED", "HEADER", name, needle])
        if not uids:
            return []
        section = f"BODY.PEEK[HEADER.FIELDS ({name.upper()})]"
        found: set[int] = set()
        for uid, data in client.fetch(uids, [section]).items():
            for key, value in data.items():
                if not key.startswith(b"BODY[HEADER") or not value:
                    continue
                header = BytesHeaderParser().parsebytes(bytes(value))
                if any(" ".join(str(v).split()) == wanted for v in header.get_all(name) or ()):
                    found.add(int(uid))
        return sorted(found)

    def get_draft(self, source_message_id: str) -> bytes | None:
        """The newest draft whose ``X-Triage-Source`` is this Message-ID, as raw bytes."""
        wanted = " ".join(source_message_id.split())
        if not wanted:
            raise ValueError("get_draft needs a Message-ID; an empty one matches every draft")

        def get(client: Any) -> bytes | None:
            folder = self._special_folder(client, b"\\Drafts", self.drafts_folder)
            if not client.folder_exists(folder):
                return None
            self._select(client, folder, readonly=True, force=True)
            uids = self._uids_with_header(client, SOURCE_HEADER, wanted)
            if not uids:
                return None
            raw = client.fetch([uids[-1]], [b"BODY.PEEK[]"]).get(uids[-1], {}).get(b"BODY[]")
            return None if raw is None else bytes(raw)

        return self._call("read a draft", get, idempotent=True)

    def delete_draft(self, source_message_id: str) -> int:
        """Remove every draft whose ``X-Triage-Source`` is this Message-ID; how many there were."""
        wanted = " ".join(source_message_id.split())
        if not wanted:
            raise ValueError("delete_draft needs a Message-ID; an empty one matches every draft")

        def delete(client: Any) -> int:
            folder = self._special_folder(client, b"\\Drafts", self.drafts_folder)
            if not client.folder_exists(folder):
                return 0
            self._select(client, folder, force=True)
            uids = self._uids_with_header(client, SOURCE_HEADER, wanted)
            if not uids:
                return 0
            client.add_flags(uids, [_DELETED], silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge(uids)
            else:
                client.expunge()  # Drafts: other \Deleted drafts go too, as a mail client would
            return len(uids)

        # Safe to repeat: a second try finds only the drafts the first one left.
        return self._call("delete a draft", delete, idempotent=True)

    def subfolder(self, *parts: str) -> str:
        """A folder name from its hierarchy parts: ``Triage/events`` (the server's delimiter)."""
        return self.folder_path(*parts)

    def has_folder(self, name: str) -> bool:
        return bool(
            self._call("list folders", lambda client: client.folder_exists(name), idempotent=True)
        )

    def create_folder(self, name: str) -> bool:
        """Create (and subscribe) a folder and its parents; False when it was there already."""
        existed = self.has_folder(name)
        self.ensure_folder(name)
        return not existed

    def read_folder(self, name: str) -> Iterator[Incoming]:
        """Every message (not ``\\Deleted``) of a folder, in UID order, read with BODY.PEEK[]."""

        def listing(client: Any) -> tuple[int, list[int]]:
            if not client.folder_exists(name):
                return 0, []
            info = self._select(client, name, readonly=True, force=True)
            uids = sorted(int(uid) for uid in client.search(["UNDELETED"]))
            return self._uidvalidity(info, name), uids

        uidvalidity, uids = self._call(f"list the messages in {name!r}", listing, idempotent=True)

        def fetch(client: Any, batch: list[int]) -> dict[int, Any]:
            info = self._select(client, name, readonly=True)
            if self._uidvalidity(info, name) != uidvalidity:
                raise MailboxError(
                    f"imap {self._where}: {name!r} changed its UIDVALIDITY while being read; "
                    "run the command again"
                )
            return dict(client.fetch(batch, [b"BODY.PEEK[]"]))

        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            found = self._call(
                f"fetch messages from {name!r}", partial(fetch, batch=batch), idempotent=True
            )
            for uid in batch:
                raw = found.get(uid, {}).get(b"BODY[]")
                if raw is not None:
                    yield Incoming(name, uidvalidity, str(uid), bytes(raw))

    def sent_folder(self) -> str:
        """The special-use ``\\Sent`` folder (else ``Sent``), created when missing."""
        return self.special_folder(b"\\Sent", "Sent")

    def save_sent(self, raw: bytes) -> str:
        """APPEND a copy of a sent message to the Sent folder, ``\\Seen``; say where it went."""
        return self.append(self.sent_folder(), raw, flags=(_SEEN,))

    def fetch_original(
        self, folder: str, uidvalidity: int, uid: str, message_id: str = ""
    ) -> Incoming | None:
        """A message by UID in ``folder`` while UIDVALIDITY holds (and its Message-ID matches),
        else the one there with this Message-ID; None when it is in neither place."""
        wanted = " ".join(message_id.split())

        def fetch_one(client: Any, found_uid: int) -> bytes | None:
            raw = client.fetch([found_uid], [b"BODY.PEEK[]"]).get(found_uid, {}).get(b"BODY[]")
            return None if raw is None else bytes(raw)

        def find(client: Any) -> Incoming | None:
            if not client.folder_exists(folder):
                return None
            info = self._select(client, folder, readonly=True, force=True)
            current = self._uidvalidity(info, folder)
            if current == uidvalidity and uid.isdigit() and int(uid) > 0:
                raw = fetch_one(client, int(uid))
                if raw is not None:
                    found_id = BytesHeaderParser().parsebytes(raw).get("Message-ID", "")
                    if not wanted or " ".join(str(found_id).split()) == wanted:
                        return Incoming(folder, current, uid, raw)
            if wanted:
                for found_uid in self._uids_with_header(client, "Message-ID", wanted):
                    raw = fetch_one(client, found_uid)
                    if raw is not None:
                        return Incoming(folder, current, str(found_uid), raw)
            return None

        return self._call(f"look for a message in {folder!r}", find, idempotent=True)


def _flatten(value: Any) -> Iterator[Any]:
    """The atoms of a reply that may be nested tuples and lists (imapclient's multiappend)."""
    if isinstance(value, tuple | list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _uid_set(text: str) -> list[int]:
    """``5:7,9`` -> [5, 6, 7, 9] (RFC 3501 sequence set, as UIDPLUS reports it)."""
    uids: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        first, last = sorted((int(low), int(high or low)))
        uids.extend(range(first, last + 1))
    return uids


def _is_loopback(host: str) -> bool:
    name = host.strip().rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """System CAs always, plus ``ca_file``: verification and host name checks stay on."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TRIAGE_IMAP_CA_FILE: cannot load {ca_file} ({exc}): it must be a readable "
                "PEM file with the CA certificate"
            ) from exc
    return context


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception as exc:  # already closed, or never fully open
        log.debug("closing the IMAP socket: %s", exc)


def _server_text(exc: BaseException) -> str:
    """The server's words, on one line, without Dovecot's timings or imaplib's b'...' quoting."""
    text = " ".join(str(exc).split())
    for prefix in ("b'", 'b"'):  # imaplib raises LOGIN failures with bytes
        text = re.sub(r"(^|: )" + prefix + r"(.*)" + prefix[1] + "$", r"\1\2", text)
    return _TIMING.sub("", text)


def _flag(flag: str | bytes) -> bytes:
    text = flag.decode("latin-1") if isinstance(flag, bytes) else flag
    if not _FLAG.fullmatch(text):
        raise ValueError(f'{flag!r} is not an IMAP flag or keyword: ASCII, no spaces or ()%*"')
    return text.encode("ascii")


def _uid(uid: str) -> int:
    try:
        value = int(uid)
    except ValueError:
        raise ValueError(f"{uid!r} is not an IMAP UID") from None
    if value <= 0:
        raise ValueError(f"{uid!r} is not an IMAP UID")
    return value


def _as_bytes(message: EmailMessage) -> bytes:
    """The message as IMAP stores it: CRLF line ends, and otherwise the message's own policy
    (``policy.SMTP`` itself would RFC 2047-encode a Message-ID longer than 78 characters in
    In-Reply-To and References, which breaks threading)."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def _is_new_mail(response: tuple[Any, ...]) -> bool:
    return len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT")


def _is_bye(response: tuple[Any, ...]) -> bool:
    return bool(response) and response[0] == b"BYE"


__all__ = ["DEFAULT_PORTS", "FETCH_BATCH", "HEADER_FETCH_BYTES", "TLS_MODES", "ImapMailbox"]
