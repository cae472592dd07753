"""RFC 3834 manners in send mode, against the real journal: only safe topics are sent, once per
sender and topic in the interval, never to ourselves, and a circuit breaker stops a flood."""

import email
from email.policy import default

import pytest
from conftest import SAMPLES

from triage.actions import may_send
from triage.cli import main
from triage.config import load_settings
from triage.journal import Journal
from triage.routing import Decision

QUESTION = SAMPLES / "glossary-01.eml"  # glossary is marked safe in replies/routing.toml


@pytest.fixture
def workdir(workdir, monkeypatch):
    """The shared work directory, in send mode."""
    monkeypatch.setenv("TRIAGE_MODE", "send")
    return workdir


def _copy(workdir, n, sender=None):
    raw = QUESTION.read_bytes()
    message = email.message_from_bytes(raw, policy=default)
    raw = raw.replace(message["Message-ID"].encode(), f"<manners-{n}@example.org>".encode())
    if sender:
        raw = raw.replace(message["From"].addresses[0].addr_spec.encode(), sender.encode())
    path = workdir / f"q{n}.eml"
    path.write_bytes(raw)
    return path


def _folder(path):
    return [email.message_from_bytes(f.read_bytes(), policy=default) for f in [*path.glob("new/*"), *path.glob("cur/*")]]


def test_safe_topic_is_sent_once_per_sender_and_topic(workdir):
    assert main(["load", str(_copy(workdir, 1))]) == 0
    assert main(["run", "--once"]) == 0
    sent = [m for m in _folder(workdir / "mail" / ".Outbox") if m["X-Triage-Topic"] == "glossary"]
    assert len(sent) == 1
    assert sent[0]["Auto-Submitted"] == "auto-replied"
    assert sent[0]["In-Reply-To"] == "<manners-1@example.org>"
    assert not _folder(workdir / "mail" / ".Drafts")

    # the same sender asks again within the interval: a draft for staff, not a second send
    assert main(["load", str(_copy(workdir, 2))]) == 0
    assert main(["run", "--once"]) == 0
    assert len([m for m in _folder(workdir / "mail" / ".Outbox") if m["X-Triage-Topic"] == "glossary"]) == 1
    drafts = _folder(workdir / "mail" / ".Drafts")
    assert [d["In-Reply-To"] for d in drafts] == ["<manners-2@example.org>"]
    assert drafts[0]["Auto-Submitted"] is None


def test_circuit_breaker_stops_sending(workdir, monkeypatch):
    monkeypatch.setenv("TRIAGE_CIRCUIT_MAX_SENDS", "2")
    for n in range(4):
        assert main(["load", str(_copy(workdir, n, sender=f"tutor{n}@school{n}.example.org"))]) == 0
    assert main(["run", "--once"]) == 0
    sent = [m for m in _folder(workdir / "mail" / ".Outbox") if m["X-Triage-Topic"] == "glossary"]
    assert len(sent) == 2
    assert len(_folder(workdir / "mail" / ".Drafts")) == 2


def test_unsafe_topic_is_drafted_even_in_send_mode(workdir):
    assert main(["load", str(SAMPLES / "transfers-01.eml")]) == 0
    assert main(["run", "--once"]) == 0
    assert [d["X-Triage-Topic"] for d in _folder(workdir / "mail" / ".Drafts")] == ["transfers"]


def _decision(topics=("glossary",), safe=True):
    return Decision("reply", topics, "t", 0.9, safe=safe)


@pytest.mark.parametrize(
    ("overrides", "address", "expected"),
    [
        ({"mode": "draft"}, "a@school.example.org", "mode is draft"),
        ({}, "SUPPORT@ect.example.org", "the reply would go to the support address itself"),
    ],
)
def test_may_send_refusals(tmp_path, overrides, address, expected):
    settings = load_settings(_env_file=None, **{"mode": "send", **overrides})
    journal = Journal(tmp_path / "j.sqlite3")
    assert may_send(_decision(), settings, journal, address) == expected
    journal.close()


def test_may_send_rate_limit_and_interval(tmp_path):
    settings = load_settings(_env_file=None, mode="send", reply_interval_days=7)
    journal = Journal(tmp_path / "j.sqlite3")
    assert may_send(_decision(), settings, journal, "a@school.example.org") is None
    assert may_send(_decision(safe=False), settings, journal, "a@school.example.org").startswith("a topic is not marked safe")
    journal.record_send("a@school.example.org", "glossary")
    assert "had an automatic reply about glossary in the last 7 days" in may_send(_decision(), settings, journal, "a@school.example.org")
    assert may_send(_decision(), settings, journal, "b@school.example.org") is None
    zero = load_settings(_env_file=None, mode="send", reply_interval_days=0)
    assert may_send(_decision(), zero, journal, "a@school.example.org") is None
    journal.close()
