"""Replies: every topic renders its FAQ facts; greetings, threading, header safety, HTML escaping."""

import email
import tomllib
from email.policy import default
from pathlib import Path

import pytest

from triage.config import load_settings
from triage.errors import TemplateError
from triage.query import parse
from triage.reply import Composer, greeting, reply_subject
from triage.routing import Contact, Decision, School
from triage.topics import TOPICS

REPLIES = Path(__file__).resolve().parent.parent / "replies"
FACTS = tomllib.loads((REPLIES / "facts.toml").read_text())


@pytest.fixture(scope="module")
def composer():
    return Composer(load_settings(_env_file=None, replies_dir=REPLIES))


def _query(name="Priya Shah", subject="Steplab question", extra_headers=""):
    raw = (
        f"From: {name} <priya@oakfield.example.sch.uk>\r\nTo: support@ect.example.org\r\n"
        f"Subject: {subject}\r\nMessage-ID: <q1@oakfield.example.sch.uk>\r\n"
        f"References: <older@x>\r\nDate: Mon, 3 Nov 2025 09:12:00 +0000\r\n{extra_headers}\r\n"
        "Hello, I can't see my ECT on Steplab, what should I do?\r\n"
    ).encode()
    return parse(raw, support_address="support@ect.example.org")


def _parts(message):
    parsed = email.message_from_bytes(message.as_bytes(), policy=default)
    return parsed, parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content()


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("school", [School(), School(Contact("North Hub", "dp@north.example.org"),
                                                     Contact("TSH East", "ab@east.example.org"))])
def test_every_topic_states_its_facts(topic, school, composer):
    decision = Decision("reply", (topic,), "test", 0.9, school=school)
    message = composer.render(decision, _query()).reply
    parsed, text, html = _parts(message)
    for phrase in FACTS[topic]["must"]:
        assert phrase.lower() in text.lower(), f"{topic}: {phrase!r} missing from the text part"
    assert "Dear Priya," in text
    assert "<p>Dear Priya,</p>" in html
    assert parsed["X-Triage-Topic"] == topic
    assert "\n\n\n" not in text
    assert not any(line != line.rstrip() for line in text.splitlines())


def test_directory_contact_is_named(composer):
    school = School(Contact("North Hub", "dp@north.example.org"), None)
    message = composer.render(Decision("reply", ("events",), "t", 0.9, school=school), _query()).reply
    _, text, html = _parts(message)
    assert "North Hub, dp@north.example.org" in text
    assert 'href="mailto:dp@north.example.org"' in html


def test_threading_headers(composer):
    message = composer.render(Decision("reply", ("events",), "t", 0.91), _query()).reply
    assert message["In-Reply-To"] == "<q1@oakfield.example.sch.uk>"
    assert message["References"] == "<older@x> <q1@oakfield.example.sch.uk>"
    assert message["Subject"] == "Re: Steplab question"
    assert message["Message-ID"].endswith("@ect.example.org>")
    assert message["Date"]
    assert message["X-Triage-Confidence"] == "0.910"
    assert message["X-Triage-Source"] == "<q1@oakfield.example.sch.uk>"
    assert message["Auto-Submitted"] is None  # a draft: a person presses send
    assert message.get_content_type() == "multipart/alternative"


def test_two_topics_one_reply_in_order(composer):
    message = composer.render(Decision("reply", ("missing-emails", "events"), "t", 0.8), _query()).reply
    _, text, html = _parts(message)
    first = text.index("If your ECTs or mentors haven't received our emails")
    second = text.index("If you can't make a programme event")
    assert first < second
    assert text.count("Dear Priya,") == 1
    assert text.count("Kind regards,") == 1
    assert "junk" in text and "delivery partner" in text
    assert html.count("<h3") == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Priya Shah", "Dear Priya,"),
        ("Shah, Priya", "Dear Priya,"),
        ("Mrs J Thompson", "Dear Mrs Thompson,"),
        ("DAVID O'NEILL", "Dear David,"),
        ("", "Hello,"),
        ("priya@oakfield.example.sch.uk", "Hello,"),
        ("Oakfield Primary School Office", "Hello,"),
        ("Zoë Ní Bhriain", "Dear Zoë,"),
        ("Dr. Amir Khan", "Dear Amir,"),
        ("J", "Hello,"),
    ],
)
def test_greeting(name, expected):
    assert greeting(name) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [("Steplab", "Re: Steplab"), ("Re: RE: Re: Steplab", "Re: Steplab"), ("", "Re: your email to ECT support"),
     ("AW: Frage", "Re: Frage"), ("Fwd: help", "Re: help")],
)
def test_one_re(subject, expected):
    assert reply_subject(subject) == expected


def test_hostile_name_and_subject_are_inert(composer):
    query = _query(name='"<script>alert(1)</script>"', subject="=?utf-8?q?hi=0D=0ABcc:_evil@x.org?=")
    message = composer.render(Decision("reply", ("glossary",), "t", 0.9), query).reply
    raw = message.as_bytes()
    assert b"\nBcc:" not in raw and b"\r\nBcc:" not in raw
    _, _text, html = _parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_non_ascii_name_is_encoded(composer):
    query = _query(name="=?utf-8?q?Zo=C3=AB_N=C3=AD_Bhriain?=", subject="=?utf-8?q?Caf=C3=A9?=")
    message = composer.render(Decision("reply", ("glossary",), "t", 0.9), query).reply
    raw = message.as_bytes()
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=default)
    assert parsed["To"].addresses[0].display_name == "Zoë Ní Bhriain"
    assert str(parsed["Subject"]) == "Re: Café"


def test_forward_attaches_the_original(composer):
    raw = b"From: a@b.org\r\nSubject: event\r\nMessage-ID: <f@b>\r\n\r\nI can't come on Tuesday.\r\n"
    query = parse(raw)
    decision = Decision("reply", ("events",), "t", 0.9, forwards=(("delivery_partner", "dp@x.org"),))
    result = composer.render(decision, query, raw=raw)
    forward = result.forwards[0]
    assert forward["To"] == "dp@x.org"
    assert forward["Auto-Submitted"] == "auto-replied"
    assert forward["X-Triage-Topic"] == "events"
    attached = [p for p in forward.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert attached and "I can't come on Tuesday." in attached[0].as_string()


def test_missing_template_is_named(tmp_path):
    (tmp_path / "glossary.txt.j2").write_text("x")
    with pytest.raises(TemplateError, match="no reply template for funding-eligibility"):
        Composer(load_settings(_env_file=None, replies_dir=tmp_path))
