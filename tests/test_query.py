"""Parsing: sender, subject, new text, threading ids, and automatic mail per RFC 3834 / 5230."""

import email.message

import pytest

from triage.query import _charset, decode_header, parse

SUPPORT = "support@ect.example.org"


def _raw(headers="", body="Hello, how do I match mentors on Steplab?", sender="Priya Shah <priya@school.example.org>",
         subject="Mentor matching", content_type="text/plain; charset=utf-8"):
    return (f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\nMessage-ID: <x1@school.example.org>\r\n"
            f"Content-Type: {content_type}\r\n{headers}\r\n{body}\r\n").encode()


def test_person_mail():
    q = parse(_raw(), support_address=SUPPORT)
    assert q.automatic is None and q.problem is None
    assert (q.sender_name, q.sender_address, q.subject) == ("Priya Shah", "priya@school.example.org", "Mentor matching")
    assert "match mentors" in q.text
    assert q.reply_to == "priya@school.example.org"


@pytest.mark.parametrize(
    ("headers", "sender", "subject", "why"),
    [
        ("Auto-Submitted: auto-replied\r\n", None, None, "Auto-Submitted"),
        ("Auto-Submitted: auto-generated\r\n", None, None, "Auto-Submitted"),
        ("Precedence: bulk\r\n", None, None, "Precedence: bulk"),
        ("Precedence: list\r\n", None, None, "Precedence: list"),
        ("Precedence: junk\r\n", None, None, "Precedence: junk"),
        ("Precedence: auto_reply\r\n", None, None, "Precedence: auto_reply"),
        ("List-Id: <news.example.org>\r\n", None, None, "List-Id"),
        ("List-Unsubscribe: <mailto:u@example.org>\r\n", None, None, "List-Unsubscribe"),
        ("X-Autoreply: yes\r\n", None, None, "X-Autoreply"),
        ("X-Auto-Response-Suppress: All\r\n", None, None, "X-Auto-Response-Suppress"),
        ("X-Loop: support@example.org\r\n", None, None, "X-Loop"),
        ("Return-Path: <>\r\n", None, None, "empty return path"),
        ("", "MAILER-DAEMON@mx.example.org", None, "machine"),
        ("", "postmaster@example.org", None, "machine"),
        ("", "no-reply@service.example.org", None, "machine"),
        ("", "noreply@service.example.org", None, "machine"),
        ("", "donotreply@service.example.org", None, "machine"),
        ("", SUPPORT, None, "support address"),
        ("", None, "Automatic reply: Mentor matching", "auto-reply subject"),
        ("", None, "Out of Office: back Monday", "auto-reply subject"),
        ("", None, "Undeliverable: Mentor matching", "auto-reply subject"),
    ],
)
def test_automatic_mail(headers, sender, subject, why):
    kwargs = {}
    if sender:
        kwargs["sender"] = sender
    if subject:
        kwargs["subject"] = subject
    q = parse(_raw(headers, **kwargs), support_address=SUPPORT)
    assert q.automatic is not None and why in q.automatic


def test_auto_submitted_no_is_a_person():
    assert parse(_raw("Auto-Submitted: no\r\n"), support_address=SUPPORT).automatic is None


def test_multipart_report_is_automatic():
    raw = _raw(content_type='multipart/report; report-type=delivery-status; boundary="b"',
               body="--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed\r\n--b--")
    assert "multipart/report" in parse(raw, support_address=SUPPORT).automatic


def test_html_only_mail_is_read_as_text():
    body = "<html><body><p>Hi,</p><p>How do I match&nbsp;mentors on <b>Steplab</b>?</p></body></html>"
    q = parse(_raw(body=body, content_type="text/html; charset=utf-8"))
    assert "match mentors on Steplab" in q.text
    assert "<" not in q.text


def test_quoted_thread_is_not_new_text():
    body = ("Thanks, that worked. Now how do I match mentors?\r\n\r\nOn Mon, 3 Nov 2025 at 09:12, ECT Support "
            "<support@ect.example.org> wrote:\r\n> Please check your junk folder for our emails.\r\n")
    q = parse(_raw(body=body, subject="Re: Missing emails"))
    assert "junk folder" not in q.text
    assert "match mentors" in q.text
    assert q.is_reply
    assert "junk folder" in q.body


def test_encoded_headers_and_charsets():
    raw = (b"From: =?utf-8?q?Zo=C3=AB_N=C3=AD_Bhriain?= <zoe@example.org>\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n"
           b"Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    raw += "Caf\u00e9 \u2013 how do I log in?\r\n".encode("cp1252")
    q = parse(raw)
    assert q.sender_name == "Zoë Ní Bhriain"
    assert q.subject == "Café"
    assert "Café – how do I log in?" in q.text


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\x02garbage", b"just some words\n"])
def test_not_mail_is_a_problem_not_a_crash(raw):
    q = parse(raw)
    assert q.problem


def test_lying_charset_does_not_crash():
    raw = _raw(content_type="text/plain; charset=x-unknown-charset", body="Caf\xe9")
    assert "Caf" in parse(raw).text


def test_decode_header_keeps_bad_words():
    assert decode_header("=?x-bogus?q?abc?=")
    assert decode_header(None) == ""


@pytest.mark.parametrize(
    "content_type",
    ['text/plain; charset="utf-8"', "text/plain; charset=UTF-8", "text/plain;charset=iso-8859-1; format=flowed",
     'text/plain; format=flowed; charset="us-ascii"; delsp=yes', "text/plain; charset*=utf-8''x",
     'text/plain; charset="utf-8" (comment)', "text/plain; charset=", "text/plain",
     'text/plain; charset = "windows-1252" ', 'text/plain; name="charset=x.txt"', 'text/plain; charset="a;b"',
     "text/plain; CHARSET=Big5", 'text/plain; charset="utf-8"; charset="latin1"', "text/plain; charset=utf-8 ; x=y"],
)
def test_charset_is_read_as_the_stdlib_reads_it(content_type):
    message = email.message.Message()
    message["Content-Type"] = content_type
    assert _charset(message) == (message.get_content_charset() or "utf-8").lower()


def test_folded_message_ids_come_out_on_one_line():
    raw = (
        b"From: a@school.example\r\nSubject: hi\r\nMessage-ID:\r\n <long-id@outlook.example>\r\n"
        b"In-Reply-To: <one@x.example>\r\n <two@x.example>\r\n\r\nHello?\r\n"
    )
    q = parse(raw)
    assert q.message_id == "<long-id@outlook.example>"
    assert q.in_reply_to == "<one@x.example> <two@x.example>"  # never a line break in a header
