"""Routing: Query + Classification + routing table -> Decision(action, topics, forwards, reason).

The table is data (``replies/routing.toml``); the parties' addresses are settings, or come from
the optional school directory (CSV: school email domain -> delivery partner, appropriate body).
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from triage.classifier import Classification
from triage.config import Settings
from triage.errors import ConfigError
from triage.query import Query
from triage.topics import TOPICS

Action = Literal["reply", "forward", "human", "ignore"]
PARTIES = ("support_team", "delivery_partner", "appropriate_body", "human")
_TABLE_ACTIONS = ("reply", "forward", "both")
# Columns of the optional school directory file.
DIRECTORY_COLUMNS = (
    "domain",
    "delivery_partner_name",
    "delivery_partner_email",
    "appropriate_body_name",
    "appropriate_body_email",
)


@dataclass(frozen=True)
class Contact:
    name: str
    email: str


@dataclass(frozen=True)
class Rule:
    action: Literal["reply", "forward", "both"] = "reply"
    party: str | None = None
    safe: bool = False


@dataclass(frozen=True)
class School:
    """What the directory knows of the sender's school."""

    delivery_partner: Contact | None = None
    appropriate_body: Contact | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with one message, and why (the reason goes to the journal and the log)."""

    action: Action
    topics: tuple[str, ...]
    reason: str
    confidence: float = 0.0
    forwards: tuple[tuple[str, str], ...] = ()  # (party, address) to forward to
    school: School = field(default_factory=School)
    safe: bool = False  # every topic is marked safe: send mode may send without review


@dataclass(frozen=True)
class Table:
    rules: dict[str, Rule]
    default: Rule

    def rule(self, topic: str) -> Rule:
        return self.rules.get(topic, self.default)


def _rule(where: str, data: dict[str, object]) -> Rule:
    action = data.get("action", "reply")
    if action not in _TABLE_ACTIONS:
        raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(_TABLE_ACTIONS)}")
    party = data.get("party")
    if party is not None and party not in PARTIES:
        raise ConfigError(f"{where}: party {party!r} is not one of {', '.join(PARTIES)}")
    if action in ("forward", "both") and party is None:
        raise ConfigError(f"{where}: action {action!r} needs a party")
    return Rule(action=action, party=party, safe=bool(data.get("safe", False)))  # type: ignore[arg-type]


def load_table(path: Path) -> Table:
    """Read the routing table; an unknown topic, action or party is a ConfigError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no routing table; check TRIAGE_REPLIES_DIR") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    default = _rule(f"{path} [default]", data.get("default", {}))
    rules: dict[str, Rule] = {}
    for topic, entry in data.get("topics", {}).items():
        if topic not in TOPICS:
            raise ConfigError(
                f"{path}: unknown topic {topic!r}; known topics are in triage/topics.py"
            )
        rules[topic] = _rule(f"{path} [topics.{topic}]", entry)
    return Table(rules, default)


def load_directory(path: Path | None) -> dict[str, School]:
    """The optional school directory: email domain -> delivery partner and appropriate body."""
    if path is None:
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = set(DIRECTORY_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(
                    f"{path}: missing columns {', '.join(sorted(missing))}; "
                    f"expected {','.join(DIRECTORY_COLUMNS)}"
                )
            schools = {}
            for row in reader:
                dp = row["delivery_partner_email"].strip()
                ab = row["appropriate_body_email"].strip()
                schools[row["domain"].strip().lower().lstrip("@")] = School(
                    Contact(row["delivery_partner_name"].strip(), dp) if dp else None,
                    Contact(row["appropriate_body_name"].strip(), ab) if ab else None,
                )
            return schools
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the directory file; check TRIAGE_DIRECTORY_FILE"
        ) from exc


@dataclass(frozen=True)
class Router:
    """The routing table, the directory and the parties' addresses, ready to route messages."""

    table: Table
    directory: dict[str, School]
    addresses: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        return cls(
            load_table(settings.replies_dir / "routing.toml"),
            load_directory(settings.directory_file),
            {
                "support_team": settings.support_team_address,
                "delivery_partner": settings.delivery_partner_address,
                "appropriate_body": settings.appropriate_body_address,
                "human": settings.human_address,
            },
        )

    def school(self, query: Query) -> School:
        domain = query.sender_domain
        while domain:
            if domain in self.directory:
                return self.directory[domain]
            domain = domain.partition(".")[2]
        return School()

    def _address(self, party: str, school: School) -> str:
        if party == "delivery_partner" and school.delivery_partner:
            return school.delivery_partner.email
        if party == "appropriate_body" and school.appropriate_body:
            return school.appropriate_body.email
        return self.addresses[party]

    def route(self, query: Query, result: Classification | None) -> Decision:
        """Decide what happens to one message."""
        if query.automatic:  # out-of-office, bounce, list, no-reply: never answered (RFC 3834)
            return Decision("ignore", (), f"automatic message: {query.automatic}")
        if query.problem or result is None:
            return Decision("human", (), f"cannot be read: {query.problem or 'no text'}")
        if not query.text.strip():
            return Decision("human", (), "no new text to answer", result.confidence)
        if not result.topics:
            if result.label == "other":
                why = f"not an FAQ question (other, {result.confidence:.2f})"
            else:
                why = (
                    f"unsure: {result.label} at {result.confidence:.2f}, margin {result.margin:.2f}"
                )
            return Decision("human", (), why, result.confidence)
        school = self.school(query)
        rules = [self.table.rule(t) for t in result.topics]
        forwards: list[tuple[str, str]] = []
        for rule in rules:
            if rule.action in ("forward", "both") and rule.party:
                target = (rule.party, self._address(rule.party, school))
                if target not in forwards:
                    forwards.append(target)
        replies = any(rule.action in ("reply", "both") for rule in rules)
        safe = all(rule.safe for rule in rules)
        reason = f"topics: {', '.join(result.topics)} ({result.confidence:.2f})"
        if forwards:
            reason += "; forward to " + ", ".join(party for party, _ in forwards)
        action: Action = "reply" if replies else "forward"
        return Decision(
            action, result.topics, reason, result.confidence, tuple(forwards), school, safe
        )


__all__ = [
    "DIRECTORY_COLUMNS",
    "PARTIES",
    "Contact",
    "Decision",
    "Router",
    "Rule",
    "School",
    "Table",
    "load_directory",
    "load_table",
]
