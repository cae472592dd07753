"""Outgoing mail: SMTP, or a local outbox folder that stands in for it (the embedded default)."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from triage.config import Settings
from triage.errors import MailboxError
from triage.maildir import OUTBOX, LocalMailbox

log = logging.getLogger(__name__)


class SendError(MailboxError):
    """The SMTP server refused a message. ``temporary``: a 4xx answer, worth trying again."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class Outbox(Protocol):
    @property
    def description(self) -> str: ...

    def send(self, message: EmailMessage) -> str:
        """Send (or queue) one message; say where it went."""
        ...


class LocalOutbox:
    """Mail "sent" into the ``.Outbox`` folder of the local Maildir, for people to read."""

    def __init__(self, root: Path) -> None:
        self._mailbox = LocalMailbox(root)
        self.path = self._mailbox.folder_path(OUTBOX)

    @property
    def description(self) -> str:
        return f"maildir {self.path}/"

    def send(self, message: EmailMessage) -> str:
        key = self._mailbox.add(message.as_bytes(), folder=OUTBOX)
        return f"{self.path}/new/{key}"


class SmtpOutbox:
    """An SMTP server with SSL or STARTTLS (plain only to loopback); verification always on."""

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
        if settings.imap_ca_file:
            self._context.load_verify_locations(cafile=str(settings.imap_ca_file))

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
            if self.tls == "starttls":
                client.starttls(context=self._context)
        if self.user and self._password is not None:
            client.login(self.user, self._password.get_secret_value())
        return client

    def send(self, message: EmailMessage) -> str:
        where = f"smtp {self.host}:{self.port}"
        try:
            with self._connect() as client:
                refused = client.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"{where}: login failed for {self.user}; check TRIAGE_SMTP_USER and "
                "TRIAGE_SMTP_PASSWORD",
                temporary=False,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            temporary = 400 <= exc.smtp_code < 500
            raise SendError(
                f"{where}: refused with {exc.smtp_code} {exc.smtp_error!r}", temporary=temporary
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise SendError(
                f"{where}: recipients refused ({', '.join(exc.recipients)})",
                temporary=all(400 <= c < 500 for c in codes),
            ) from exc
        except ssl.SSLError as exc:
            raise SendError(
                f"{where}: TLS failed ({exc.reason}); check TRIAGE_SMTP_TLS and the certificate",
                temporary=False,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timeout, dropped
            raise SendError(f"{where}: cannot send ({exc})", temporary=True) from exc
        if refused:
            log.warning("smtp refused some recipients: %s", ", ".join(refused))
        return f"{where} as {message['Message-ID']}"


def open_outbox(settings: Settings) -> Outbox:
    """SMTP when TRIAGE_SMTP_HOST is set, else the local outbox folder."""
    if settings.smtp_host:
        return SmtpOutbox(settings)
    return LocalOutbox(settings.maildir)


__all__ = ["LocalOutbox", "Outbox", "SendError", "SmtpOutbox", "open_outbox"]
