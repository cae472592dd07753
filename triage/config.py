"""Settings: the one configuration class, read from TRIAGE_ environment variables and `.env`."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from triage.errors import ConfigError

ENV_PREFIX = "TRIAGE_"

# A plain address check: one @, no spaces or angle brackets (full RFC 5322 is not needed here).
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")

# What each setting is for, shown by `triage config` and the README settings table.
Mode = Literal["draft", "send", "dry-run"]
Tls = Literal["ssl", "starttls", "none"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (plain-text IMAP/SMTP is allowed only there)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting of triage; environment variable = ``TRIAGE_`` + the field name in capitals."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    # --- the mailbox: IMAP, or the local Maildir when no host is set
    imap_host: str | None = None  # None: the local Maildir below
    imap_port: int | None = Field(None, ge=1, le=65535)  # None: 993 for ssl, 143 otherwise
    imap_tls: Tls = "ssl"
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_ca_file: Path | None = None
    imap_folder: str = "INBOX"
    imap_drafts_folder: str = "Drafts"  # used when the server marks no folder \Drafts
    imap_handoff_folder: str | None = None  # hand-offs are moved here when set
    maildir: Path = Path("mail")

    # --- outgoing mail: SMTP, or the local outbox folder when no host is set
    smtp_host: str | None = None
    smtp_port: int | None = Field(None, ge=1, le=65535)  # None: 465 for ssl, 587 otherwise
    smtp_tls: Tls = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = None  # extra CA to trust for SMTP (TRIAGE_IMAP_CA_FILE if unset)

    # --- state and model
    state_db: Path = Path("triage.sqlite3")
    model_path: Path = Path("models/triage.joblib")
    replies_dir: Path = Path("replies")
    training_dir: Path = Path("models/data")

    # --- behaviour
    mode: Mode = "draft"
    poll_seconds: float = Field(60.0, gt=0)
    idle_seconds: float = Field(300.0, gt=0, le=1740)  # re-issue IDLE well before 29 minutes
    max_message_bytes: int = Field(10_000_000, gt=0)  # larger mail goes to a human unread

    # --- addresses: ours and the parties a message can be forwarded to
    support_address: str = "support@ect.example.org"
    reply_from_name: str = "ECT Support Team"  # display name of replies, and their signature
    reply_closing: str = "Kind regards,"
    support_team_address: str = "ect-support-team@ect.example.org"
    delivery_partner_address: str = "delivery-partners@ect.example.org"
    appropriate_body_address: str = "appropriate-bodies@ect.example.org"
    human_address: str = "triage-team@ect.example.org"
    directory_file: Path | None = None  # CSV: school domain -> delivery partner, appropriate body

    # --- RFC 3834 manners for anything sent without a person pressing send
    reply_interval_days: float = Field(7.0, ge=0)
    circuit_max_sends: int = Field(30, ge=1)
    circuit_minutes: float = Field(10.0, gt=0)

    @field_validator(
        "support_address",
        "support_team_address",
        "delivery_partner_address",
        "appropriate_body_address",
        "human_address",
    )
    @classmethod
    def _is_address(cls, value: str) -> str:
        if not _ADDRESS.fullmatch(value):
            raise ValueError("expected an email address such as support@example.org")
        return value.lower()

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.imap_host:
            if not self.imap_user:
                raise ValueError("TRIAGE_IMAP_USER: required when TRIAGE_IMAP_HOST is set")
            if self.imap_password is None:
                raise ValueError("TRIAGE_IMAP_PASSWORD: required when TRIAGE_IMAP_HOST is set")
            if self.imap_tls == "none" and not is_loopback(self.imap_host):
                raise ValueError(
                    f"TRIAGE_IMAP_TLS: 'none' is refused for {self.imap_host}; "
                    "plain text is allowed only to a loopback host; use ssl or starttls"
                )
        if self.smtp_host and self.smtp_tls == "none" and not is_loopback(self.smtp_host):
            raise ValueError(
                f"TRIAGE_SMTP_TLS: 'none' is refused for {self.smtp_host}; "
                "plain text is allowed only to a loopback host; use ssl or starttls"
            )
        for name in ("imap_ca_file", "smtp_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"TRIAGE_{name.upper()}: {path} is not a readable file")
        return self

    @property
    def imap_effective_port(self) -> int:
        if self.imap_port is not None:
            return self.imap_port
        return 993 if self.imap_tls == "ssl" else 143

    @property
    def smtp_effective_port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return 465 if self.smtp_tls == "ssl" else (587 if self.smtp_tls == "starttls" else 25)

    def masked(self) -> dict[str, str]:
        """Every setting as its environment variable and a printable value, secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********"
            elif value is None:
                text = ""
            else:
                text = str(value)
            shown[ENV_PREFIX + name.upper()] = text
        return shown


def _describe(error: dict[str, Any]) -> str:
    """One validation error as ``TRIAGE_VARIABLE: what is wrong; what to do``."""
    loc = [str(part) for part in error.get("loc", ()) if part]
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not loc:  # a model-level check: its message already names the variable
        return message
    variable = ENV_PREFIX + loc[0].upper()
    given = error.get("input")
    hint = f"{message[0].lower()}{message[1:]}" if message else "invalid value"
    if isinstance(given, str | int | float) and "password" not in loc[0]:
        return f"{variable}: {given!r} is not valid: {hint}"
    return f"{variable}: {hint}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment and ``.env`` (and overrides); bad values: ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise ConfigError(
            f"bad configuration: {problems} (set it in the environment or .env)"
        ) from exc


__all__ = ["Mode", "Settings", "is_loopback", "load_settings"]
