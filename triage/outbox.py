"""Outgoing mail: SMTP, or a local outbox folder that stands in for it (the embedded default).

``OutboxQueue`` puts a durable queue (a table in the journal's SQLite file) in front of either:
a message is queued before the first attempt, and stays queued until the server takes it.

Delivery is at least once, never at most once. The queue row goes to ``sending`` (committed)
before the SMTP transaction and to ``sent`` after the server's 250. A crash between the two
leaves the row in ``sending``: its outcome is unknown, so it is sent again on the next pass.
That window (the server said 250, the ``sent`` row was not yet committed) is the only way a
message goes out twice. Every attempt sends the same bytes with the same ``Message-ID``, so a
receiver (or its mail client, or a mailing-list server) can drop the duplicate by Message-ID.
"""

from __future__ import annotations

import logging
import random
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Literal, Protocol

from triage.config import Settings
from triage.errors import MailboxError
from triage.journal import Journal, QueuedMail
from triage.mailbox import Incoming, Mailbox
from triage.maildir import OUTBOX, LocalMailbox

log = logging.getLogger(__name__)

# Retries of a queued message: doubling from 30 s up to 30 minutes, with jitter (x0.5..1) so a
# queue that built up during an outage does not go out in one burst. A mail server that is down
# for maintenance is usually back within minutes; the queue never gives up on a message.
QUEUE_RETRY_START_SECONDS = 30.0
QUEUE_RETRY_CAP_SECONDS = 1800.0


class SendError(MailboxError):
    """The SMTP server refused a message, or could not be used.

    ``temporary``: worth trying again (4xx, or no connection); ``code``: the SMTP reply code, or
    None when there was no reply for this message (connection, TLS, login): then the server, not
    the message, is the problem and the rest of the queue waits too.
    """

    def __init__(self, message: str, *, temporary: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.code = code


class Outbox(Protocol):
    @property
    def description(self) -> str: ...

    # Whether a copy of what is sent belongs in the mailbox's Sent folder (an SMTP server does
    # not keep one; the local outbox folder is itself the copy).
    sent_copy: bool

    def send(self, message: EmailMessage) -> str:
        """Send one message; say where it went."""
        ...

    def deliver(self, raw: bytes) -> str:
        """Send one message given as the exact bytes to send; say where it went."""
        ...


class LocalOutbox:
    """Mail "sent" into the ``.Outbox`` folder of the local Maildir, for people to read."""

    sent_copy = False

    def __init__(self, root: Path) -> None:
        self._mailbox = LocalMailbox(root)
        self.path = self._mailbox.folder_path(OUTBOX)

    @property
    def description(self) -> str:
        return f"maildir {self.path}/"

    def send(self, message: EmailMessage) -> str:
        return self.deliver(as_bytes(message))

    def deliver(self, raw: bytes) -> str:
        key = self._mailbox.add(raw, folder=OUTBOX)
        return f"{self.path}/new/{key}"


class SmtpOutbox:
    """An SMTP server with SSL or STARTTLS (plain only to loopback); verification always on."""

    sent_copy = True

    def __init__(self, settings: Settings, *, timeout: float = 30.0) -> None:
        if not settings.smtp_host:
            raise ValueError("SmtpOutbox needs TRIAGE_SMTP_HOST")
        self.host = settings.smtp_host
        self.port = settings.smtp_effective_port
        self.tls = settings.smtp_tls
        self.user = settings.smtp_user
        self._password = settings.smtp_password
        self.timeout = timeout
        self._context = ssl.create_default_context()
        ca_file = settings.smtp_ca_file or settings.imap_ca_file
        if ca_file:
            self._context.load_verify_locations(cafile=str(ca_file))

    @property
    def description(self) -> str:
        return f"smtp {self.host}:{self.port}"

    def _connect(self) -> smtplib.SMTP:
        if self.tls == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.tls == "starttls":
                client.starttls(context=self._context)
            if self.user and self._password is not None:
                client.login(self.user, self._password.get_secret_value())
        except BaseException:
            client.close()
            raise
        return client

    def send(self, message: EmailMessage) -> str:
        return self.deliver(as_bytes(message))

    def deliver(self, raw: bytes) -> str:
        """One SMTP transaction for ``raw``; the envelope comes from its From, To and Cc."""
        where = self.description
        headers = BytesHeaderParser().parsebytes(raw)
        sender = parseaddr(str(headers.get("From", "")))[1]
        fields = [str(v) for name in ("To", "Cc") for v in headers.get_all(name) or ()]
        recipients = [address for _, address in getaddresses(fields) if address]
        if not recipients:
            raise SendError(f"{where}: the message has no recipient", temporary=False)
        try:
            client = self._connect()
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"{where}: login failed for {self.user} ({exc.smtp_code}); check "
                "TRIAGE_SMTP_USER and TRIAGE_SMTP_PASSWORD",
                temporary=True,
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise SendError(
                f"{where}: the server does not offer STARTTLS or login; check TRIAGE_SMTP_TLS "
                "and TRIAGE_SMTP_PORT",
                temporary=True,
            ) from exc
        except ssl.SSLError as exc:
            raise SendError(
                f"{where}: TLS failed ({exc.reason or exc}); check TRIAGE_SMTP_TLS, "
                "TRIAGE_SMTP_PORT and the certificate (TRIAGE_IMAP_CA_FILE adds a CA)",
                temporary=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timeout, greeting
            raise SendError(f"{where}: cannot connect ({_reason(exc)})", temporary=True) from exc
        try:
            client.ehlo_or_helo_if_needed()
            # A forward carries the original as it came, 8-bit bodies included (RFC 6152).
            options = ["BODY=8BITMIME"] if not raw.isascii() and client.has_extn("8bitmime") else []
            refused = client.sendmail(sender, recipients, raw, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise SendError(
                f"{where}: recipients refused ("
                + "; ".join(f"{a}: {c} {_text(m)}" for a, (c, m) in exc.recipients.items())
                + ")",
                temporary=all(400 <= c < 500 for c in codes),
                code=max(codes) if codes else None,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            temporary = not 500 <= exc.smtp_code < 600
            raise SendError(
                f"{where}: refused with {exc.smtp_code} {_text(exc.smtp_error)}",
                temporary=temporary,
                code=exc.smtp_code,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:  # dropped mid-transaction: unknown
            raise SendError(f"{where}: cannot send ({_reason(exc)})", temporary=True) from exc
        finally:
            _quit(client)
        if refused:
            log.warning("smtp refused some recipients: %s", ", ".join(refused))
        return where


def as_bytes(message: EmailMessage) -> bytes:
    """The message as it goes on the wire: CRLF line ends, and the message's own policy for the
    rest (reply.POLICY lets a long Message-ID stay on one line instead of RFC 2047 words)."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    return _text(str(exc)) or type(exc).__name__


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


@dataclass(frozen=True)
class Delivery:
    """What became of one queued message on one try."""

    item: QueuedMail
    status: Literal["sent", "queued", "refused"]
    detail: str  # where it went, or why it waits, or why it was refused

    @property
    def source(self) -> Incoming | None:
        """The original this message belongs to (to flag it for a human on a refusal)."""
        if not self.item.uid:
            return None
        return Incoming(self.item.folder, self.item.uidvalidity, self.item.uid, b"")


class OutboxQueue:
    """The durable queue in front of an Outbox; rows live in the journal's ``outbox`` table."""

    def __init__(
        self,
        outbox: Outbox,
        journal: Journal,
        *,
        retry_start: float = QUEUE_RETRY_START_SECONDS,
        retry_cap: float = QUEUE_RETRY_CAP_SECONDS,
    ) -> None:
        self.outbox = outbox
        self.journal = journal
        self.retry_start = retry_start
        self.retry_cap = retry_cap
        self._server_down = False  # a connection failed during this pass: queue, do not try
        self._retry_at = 0.0  # when the server is tried again after that failure

    @property
    def description(self) -> str:
        return self.outbox.description

    def submit(
        self,
        message: EmailMessage,
        *,
        kind: str,
        entry_id: int | None,
        source: Incoming | None,
        mailbox: Mailbox | None,
    ) -> Delivery:
        """Queue ``message`` for the journal entry ``entry_id`` and try to send it now.

        For an entry that queued this kind of message to this recipient before (a retry after a
        crash), nothing new is queued: the earlier row is reported, or tried if still waiting.
        """
        raw = as_bytes(message)
        item = self.journal.enqueue(
            entry_id=entry_id,
            kind=kind,
            recipient=str(message.get("To", "")),
            message_id=str(message.get("Message-ID", "")).strip(),
            raw=raw,
            folder=source.folder if source else "",
            uidvalidity=source.uidvalidity if source else 0,
            uid=source.uid if source else "",
        )
        if item.status == "sent":
            self._copy(item, mailbox)
            return Delivery(item, "sent", f"already sent as {item.message_id}")
        if item.status == "refused":
            return Delivery(item, "refused", item.last_error)
        if self._server_down:
            reason = f"queued: {self.outbox.description} was unreachable in this pass"
            self.journal.queue_deferred(item.id, error=reason, next_attempt_at=self._retry_at)
            return Delivery(self._reload(item), "queued", reason)
        return self._attempt(item, mailbox)

    def flush(self, mailbox: Mailbox | None, *, now: float | None = None) -> list[Delivery]:
        """Try every queued message that is due; finish Sent copies; report refusals not yet
        handed off. Stops trying at the first failure to reach the server (the rest wait)."""
        self._server_down = False
        deliveries: list[Delivery] = []
        for item in self.journal.queue_unfinished():
            if item.status == "sent":
                self._copy(item, mailbox)
            else:
                deliveries.append(Delivery(item, "refused", item.last_error))
        for item in self.journal.queue_due(time.time() if now is None else now):
            if self._server_down:  # the rest wait as long as the item that found it down
                self.journal.queue_deferred(
                    item.id,
                    error=item.last_error or "server unreachable",
                    next_attempt_at=self._retry_at,
                )
                continue
            if item.status == "sending":
                log.warning(
                    "outbox: %s to %s may or may not have been sent before a crash; sending it "
                    "again (receivers can drop the copy by its Message-ID)",
                    item.message_id,
                    item.recipient,
                )
            deliveries.append(self._attempt(item, mailbox))
        return deliveries

    def next_due(self) -> float | None:
        """Unix time when the next queued message is due, or None when none waits."""
        return self.journal.queue_next_due()

    def _attempt(self, item: QueuedMail, mailbox: Mailbox | None) -> Delivery:
        self.journal.queue_sending(item.id)  # committed before the SMTP transaction
        try:
            where = self.outbox.deliver(item.raw)
        except SendError as exc:
            if exc.temporary:
                attempts = item.attempts + 1
                pause = min(self.retry_cap, self.retry_start * 2 ** (attempts - 1))
                pause *= random.uniform(0.5, 1.0)
                retry_at = time.time() + pause
                self.journal.queue_deferred(item.id, error=str(exc), next_attempt_at=retry_at)
                if exc.code is None:
                    self._server_down, self._retry_at = True, retry_at
                log.warning(
                    "outbox: %s to %s not sent (%s); attempt %d in %.1f s",
                    item.kind,
                    item.recipient,
                    exc,
                    attempts + 1,
                    pause,
                )
                return Delivery(self._reload(item), "queued", f"queued ({exc})")
            self.journal.queue_refused(item.id, error=str(exc))
            log.error("outbox: %s to %s refused: %s", item.kind, item.recipient, exc)
            return Delivery(self._reload(item), "refused", str(exc))
        # Anything else raised above (a bug, KeyboardInterrupt) leaves the row "sending": its
        # outcome is unknown, and it is sent again on the next pass.
        self.journal.queue_sent(item.id)  # committed after the server's 250
        log.info("outbox: %s sent to %s via %s", item.kind, item.recipient, where)
        item = self._reload(item)
        self._copy(item, mailbox)
        return Delivery(item, "sent", f"sent via {where} as {item.message_id}")

    def _reload(self, item: QueuedMail) -> QueuedMail:
        return self.journal.queue_get(item.id) or item

    def _copy(self, item: QueuedMail, mailbox: Mailbox | None) -> None:
        """A copy of a sent message in the mailbox's Sent folder (once; retried on the next
        pass if the mailbox cannot take it now)."""
        if item.copied == 1 or mailbox is None or not self.outbox.sent_copy:
            return
        try:
            if item.copied == -1 and _holds(mailbox, item.message_id):
                log.info("outbox: Sent already holds %s", item.message_id)
            else:
                self.journal.queue_copied(item.id, -1)
                _save_sent(mailbox, item.raw)
        except MailboxError as exc:
            log.warning(
                "outbox: no copy of %s in Sent yet (%s); trying again later", item.message_id, exc
            )
            return
        self.journal.queue_copied(item.id, 1)


def _save_sent(mailbox: Mailbox, raw: bytes) -> None:
    """APPEND to the special-use ``\\Sent`` folder (IMAP), or add to ``.Sent`` (Maildir)."""
    mailbox.save_sent(raw)


def _holds(mailbox: Mailbox, message_id: str) -> bool:
    """Whether the Sent folder already holds a message with this Message-ID."""
    return bool(message_id) and mailbox.holds(mailbox.sent_folder(), message_id)


def open_outbox(settings: Settings) -> Outbox:
    """SMTP when TRIAGE_SMTP_HOST is set, else the local outbox folder."""
    if settings.smtp_host:
        return SmtpOutbox(settings)
    return LocalOutbox(settings.maildir)


__all__ = [
    "QUEUE_RETRY_CAP_SECONDS",
    "QUEUE_RETRY_START_SECONDS",
    "Delivery",
    "LocalOutbox",
    "Outbox",
    "OutboxQueue",
    "SendError",
    "SmtpOutbox",
    "as_bytes",
    "open_outbox",
]
