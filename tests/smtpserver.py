"""A real SMTP server (aiosmtpd's Controller) on 127.0.0.1 for tests: plain, STARTTLS or SMTPS.

The handler keeps every message it accepted and answers DATA from a script, so a test can make
the server say ``451`` (try later) or ``550`` (refused) on demand. ``stop()`` closes the port
(clients get "connection refused"); ``start()`` opens it again on the same port, keeping what
was received.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from imapserver import OPENSSL, free_port

Tls = Literal["none", "starttls", "ssl"]
ACCEPTED = "250 Message accepted for delivery"


@dataclass(frozen=True)
class Received:
    """One message the server accepted: its envelope and the bytes as they came."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...] = ()

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=default)  # type: ignore[return-value]


class Recorder:
    """aiosmtpd handler: records accepted messages; ``answers`` scripts the replies to DATA."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[str] = []  # popped one per DATA; empty: accept
        self.rcpt_answers: list[str] = []  # popped one per RCPT TO; empty: accept
        self.attempts = 0  # DATA commands seen, accepted or not
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self._lock:
            answer = self.rcpt_answers.pop(0) if self.rcpt_answers else "250 OK"
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.attempts += 1
            answer = self.answers.pop(0) if self.answers else ACCEPTED
            if answer.startswith("250"):
                content = envelope.original_content or envelope.content
                self.received.append(
                    Received(
                        envelope.mail_from,
                        tuple(envelope.rcpt_tos),
                        bytes(content),
                        tuple(envelope.mail_options),
                    )
                )
        return answer


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert),
            "-days", "3650", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class LocalSmtpServer:
    """aiosmtpd on 127.0.0.1:``port`` in a thread of this process."""

    host = "127.0.0.1"

    def __init__(
        self, *, tls: Tls = "none", cert: Path | None = None, key: Path | None = None
    ) -> None:
        if tls != "none" and (cert is None or key is None):
            raise ValueError("TLS needs cert and key (see make_certificate)")
        self.tls = tls
        self.cert = cert
        self.key = key
        self.port = free_port()
        self.handler = Recorder()
        self._controller: Controller | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def running(self) -> bool:
        return self._controller is not None

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def start(self) -> None:
        """Listen (again) on ``port``; returns once the server answers."""
        if self._controller is not None:
            raise RuntimeError("LocalSmtpServer already running")
        options: dict[str, Any] = {}
        if self.tls == "starttls":
            options.update(tls_context=self._server_context(), require_starttls=True)
        elif self.tls == "ssl":
            options.update(ssl_context=self._server_context())
        controller = Controller(
            self.handler, hostname=self.host, port=self.port, ready_timeout=10, **options
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Close the port: new connections are refused until ``start()``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> LocalSmtpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["ACCEPTED", "LocalSmtpServer", "Received", "Recorder", "make_certificate"]
