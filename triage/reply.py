"""Rendered reply: Decision + Query -> Reply (EmailMessage objects rendered from replies/).

Templates render in a sandboxed Jinja2 environment with StrictUndefined. The answer of each topic
is one source (``replies/<topic>.txt.j2``); the text and HTML parts are laid out from it, the
HTML one autoescaped, so nothing a sender writes can become markup or a header.
"""

from __future__ import annotations

import email
import email.utils
import re
import tomllib
import uuid
from dataclasses import dataclass
from email.charset import QP, Charset
from email.contentmanager import raw_data_manager
from email.header import Header
from email.message import EmailMessage
from email.policy import Compat32
from email.utils import formataddr
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from triage.config import Settings
from triage.errors import TemplateError
from triage.mailbox import SOURCE_HEADER
from triage.query import Query
from triage.routing import Contact, Decision
from triage.topics import TOPICS

# Titles people put before their name in a display name.
_TITLES = frozenset(
    {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "professor", "sir", "dame", "rev"}
)
# Words that mark a display name as an office or a team, not a person.
_NOT_A_PERSON = frozenset(
    {
        "school",
        "office",
        "admin",
        "team",
        "academy",
        "trust",
        "support",
        "enquiries",
        "info",
        "reception",
        "finance",
        "hr",
        "college",
        "primary",
        "secondary",
    }
)
_REPLY_PREFIXES = re.compile(r"^\s*((re|aw|sv|antw|fwd?|fw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_URL = re.compile(r"(https?://[^\s<>\"]+[^\s<>\".,;:!?)])|([\w.+-]+@[\w-]+(?:\.[\w-]+)+)")


# Header lines may be up to RFC 5322's hard limit: the stdlib folds a long Message-ID by
# RFC 2047-encoding it at 78, which breaks threading in every mail client.
class _Policy(Compat32):
    """How replies are built: compat32's plain-string headers (three times faster than the
    header objects of ``policy.default``; every value is cleaned and encoded here first), lines
    up to RFC 5322's hard limit (the stdlib folds a long Message-ID into RFC 2047 words at 78,
    which breaks threading), and a content manager so ``get_content()`` works as usual."""

    content_manager = raw_data_manager
    message_factory = EmailMessage


POLICY = _Policy(max_line_length=998)
# Bodies: UTF-8, quoted-printable (7-bit safe on any server, readable in the raw).
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def _header(value: str) -> str:
    """A cleaned header value, RFC 2047-encoded when it is not ASCII."""
    value = clean_header(value)
    return value if value.isascii() else Header(value, "utf-8", maxlinelen=998).encode()


def _mailbox(name: str, address: str) -> str:
    """``Name <address>`` with the name quoted or encoded as needed."""
    return formataddr((clean_header(name), address), charset="utf-8")


def _text_part(text: str, subtype: str) -> EmailMessage:
    part = EmailMessage(policy=POLICY)
    part.set_payload(text, _UTF8)
    part.set_type(f"text/{subtype}")
    del part["MIME-Version"]
    return part


# At most this many lines of the original are quoted under a reply.
_QUOTE_LINES = 200


@dataclass(frozen=True)
class Reply:
    """The mail one decision produces: a reply to the sender, forwards to parties."""

    reply: EmailMessage | None
    forwards: tuple[EmailMessage, ...] = ()


def clean_header(value: str) -> str:
    """A header value that cannot break out of its header: control characters become spaces."""
    return " ".join(_CONTROL.sub(" ", value).split())


def reply_subject(subject: str) -> str:
    """One ``Re:`` before the subject, whatever prefixes it came with."""
    subject = clean_header(subject)
    base = _REPLY_PREFIXES.sub("", subject).strip()
    return f"Re: {base}" if base else "Re: your email to ECT support"


def _capitalise(word: str) -> str:
    if not word.isupper() and not word.islower():
        return word  # keep mixed case as the sender wrote it (McDonald, DeSouza)
    return re.sub(r"(^|[-'\u2019])(\w)", lambda m: m.group(1) + m.group(2).upper(), word.lower())


def greeting(display_name: str) -> str:
    """``Dear Priya,`` from a display name; ``Hello,`` when it names no person."""
    name = clean_header(display_name).strip("\"' ")
    if not name or "@" in name or any(ch.isdigit() for ch in name):
        return "Hello,"
    if "," in name:  # "Shah, Priya" -> "Priya Shah"
        surname, _, given = name.partition(",")
        name = f"{given.strip()} {surname.strip()}"
    words = [w.strip(".") for w in name.split() if w.strip(".")]
    if not words or any(w.lower() in _NOT_A_PERSON for w in words):
        return "Hello,"
    title = words[0] if words[0].lower() in _TITLES else ""
    rest = words[1:] if title else words
    if not rest:
        return "Hello,"
    given = rest[0]
    if title and (len(given) == 1 or (len(rest) > 1 and len(given) <= 2 and given.isupper())):
        # "Mrs J Thompson" -> "Dear Mrs Thompson,"
        return f"Dear {_capitalise(title)} {_capitalise(rest[-1])},"
    if len(given) == 1:
        return "Hello,"
    return f"Dear {_capitalise(given)},"


def _as_html(text: str) -> Markup:
    """Trusted template text as HTML paragraphs, lists and links (escaped first)."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if all(line.lstrip().startswith("- ") for line in lines):
            items = "".join(f"<li>{_linkify(line.lstrip()[2:])}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        else:
            blocks.append("<p>" + "<br>".join(_linkify(line) for line in lines) + "</p>")
    return Markup("\n".join(blocks))


def _linkify(line: str) -> str:
    out, last = [], 0
    for match in _URL.finditer(line):
        out.append(str(escape(line[last : match.start()])))
        target = match.group(0)
        href = target if match.group(1) else f"mailto:{target}"
        out.append(f'<a href="{escape(href)}">{escape(target)}</a>')
        last = match.end()
    out.append(str(escape(line[last:])))
    return "".join(out)


class Composer:
    """The templates of ``replies/`` loaded once, and the settings replies need."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        directory = settings.replies_dir
        if not directory.is_dir():
            raise TemplateError(f"{directory}: no reply templates here; check TRIAGE_REPLIES_DIR")
        loader = FileSystemLoader(str(directory))
        common: dict[str, Any] = {
            "loader": loader,
            "undefined": StrictUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "keep_trailing_newline": False,
        }
        self._text = SandboxedEnvironment(autoescape=False, **common)
        self._html = SandboxedEnvironment(autoescape=True, **common)
        self._html.filters["as_html"] = _as_html
        missing = [t for t in TOPICS if not (directory / f"{t}.txt.j2").is_file()]
        if missing:
            raise TemplateError(
                f"{directory}: no reply template for {', '.join(missing)}; "
                "add replies/<topic>.txt.j2"
            )
        self.links = self._toml(directory / "links.toml")
        self.headings = self._toml(directory / "headings.toml")

    @staticmethod
    def _toml(path: Path) -> dict[str, Any]:
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TemplateError(f"{path}: cannot be read ({exc})") from exc

    def answer(self, topic: str, decision: Decision) -> str:
        """The FAQ answer for one topic, as plain text."""
        context = {
            "links": self.links.get("links", {}),
            "safe_senders": self.links.get("mail", {}).get("safe_senders", []),
            "support_address": self.settings.support_address,
            "delivery_partner": _contact(decision.school.delivery_partner),
            "appropriate_body": _contact(decision.school.appropriate_body),
        }
        return self._render(self._text, f"{topic}.txt.j2", context).strip()

    def _render(self, env: SandboxedEnvironment, name: str, context: dict[str, Any]) -> str:
        try:
            return env.get_template(name).render(**context)
        except JinjaError as exc:
            raise TemplateError(f"{self.settings.replies_dir / name}: {exc}") from exc

    def heading(self, topic: str) -> str:
        return str(self.headings.get(topic, topic))

    def _base(
        self, to: str, subject: str, source: Query, topics: tuple[str, ...], confidence: float
    ) -> EmailMessage:
        domain = self.settings.support_address.rpartition("@")[2]
        message = EmailMessage(policy=POLICY)
        message["From"] = _mailbox(self.settings.reply_from_name, self.settings.support_address)
        message["To"] = to
        message["Subject"] = _header(subject)
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain=domain)
        message["X-Triage-Topic"] = ",".join(topics)
        message["X-Triage-Confidence"] = f"{confidence:.3f}"
        if source.message_id:
            message[SOURCE_HEADER] = _header(source.message_id)
        return message

    def render(
        self, decision: Decision, query: Query, *, raw: bytes | None = None, automatic: bool = False
    ) -> Reply:
        """The reply (when the decision answers) and the forwards, ready to store or send."""
        reply = None
        if decision.action == "reply":
            reply = self.render_reply(decision, query, automatic=automatic)
        forwards = tuple(
            self.render_forward(decision, query, party, address, replied=reply is not None, raw=raw)
            for party, address in decision.forwards
        )
        return Reply(reply, forwards)

    def render_reply(
        self, decision: Decision, query: Query, *, automatic: bool = False
    ) -> EmailMessage:
        sections = [
            {"topic": t, "heading": self.heading(t), "body": self.answer(t, decision)}
            for t in decision.topics
        ]
        quoted = query.body.strip().splitlines()[:_QUOTE_LINES] if query.body.strip() else []
        sender = clean_header(query.sender_name) or query.sender_address
        when = clean_header(query.date) or "an earlier date"
        subject = reply_subject(query.subject)
        context = {
            "greeting": greeting(query.sender_name),
            "sections": sections,
            "closing": self.settings.reply_closing,
            "signature": self.settings.reply_from_name,
            "quote_intro": f"On {when}, {sender} wrote:",
            "quoted": quoted,
            "subject": subject,
        }
        text = self._render(self._text, "_layout.txt.j2", context).strip() + "\n"
        html = self._render(self._html, "_layout.html.j2", context)
        message = self._base(
            _mailbox(query.sender_name, query.reply_to or query.sender_address),
            subject,
            query,
            decision.topics,
            decision.confidence,
        )
        if query.message_id:
            message["In-Reply-To"] = _header(query.message_id)
            refs = [*query.references]
            if query.in_reply_to and query.in_reply_to not in refs:
                refs.append(query.in_reply_to)
            refs.append(query.message_id)
            message["References"] = _header(" ".join(dict.fromkeys(refs)))
        if automatic:
            message["Auto-Submitted"] = "auto-replied"  # RFC 3834 s. 5
        message["MIME-Version"] = "1.0"
        message["Content-Type"] = f'multipart/alternative; boundary="{_boundary()}"'
        message.attach(_text_part(text, "plain"))
        message.attach(_text_part(html, "html"))
        return message

    def render_forward(
        self,
        decision: Decision,
        query: Query,
        party: str,
        address: str,
        *,
        replied: bool,
        raw: bytes | None = None,
    ) -> EmailMessage:
        context = {
            "sender": _mailbox(query.sender_name, query.sender_address or "unknown@invalid"),
            "headings": [self.heading(t) for t in decision.topics] or ["a question for a person"],
            "party": party,
            "reason": decision.reason,
            "replied": replied,
            "signature": self.settings.reply_from_name,
        }
        text = self._render(self._text, "_forward.txt.j2", context).strip() + "\n"
        subject = clean_header(query.subject) or "(no subject)"
        message = self._base(
            address,
            f"Fwd: {_REPLY_PREFIXES.sub('', subject)}",
            query,
            decision.topics,
            decision.confidence,
        )
        message["Auto-Submitted"] = "auto-replied"  # sent without a person pressing send
        message["MIME-Version"] = "1.0"
        if raw is None:
            message.set_payload(text, _UTF8)
            return message
        message["Content-Type"] = f'multipart/mixed; boundary="{_boundary()}"'
        message.attach(_text_part(text, "plain"))
        attached = EmailMessage(policy=POLICY)  # the original, unchanged, as message/rfc822
        attached["Content-Type"] = "message/rfc822"
        attached["Content-Disposition"] = 'attachment; filename="original.eml"'
        attached.set_payload([email.message_from_bytes(raw, policy=POLICY)])
        message.attach(attached)
        return message


def _boundary() -> str:
    """A multipart boundary no text can contain (a random 128-bit token). The stdlib would make
    one itself, and compile a regular expression to check it against the text, per message: a
    third of the cost of writing a draft."""
    return f"=_triage_{uuid.uuid4().hex}"


def _contact(contact: Contact | None) -> dict[str, str] | None:
    return {"name": contact.name, "email": contact.email} if contact else None


__all__ = ["Composer", "Reply", "clean_header", "greeting", "reply_subject"]
