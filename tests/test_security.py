"""Nothing leaks: passwords and message bodies never reach logs or errors; templates cannot
reach files or code through message content; plain text only to loopback."""

import logging

import pytest
from conftest import ROOT, SAMPLES

from triage.cli import main
from triage.config import load_settings
from triage.errors import ConfigError
from triage.query import parse
from triage.reply import Composer
from triage.routing import Decision

# A sentence from the body of a sample, to look for in the logs.
BODY_SENTENCE = "won't be able to attend"


def test_a_whole_run_logs_no_bodies(workdir, caplog, capsys):
    assert any(BODY_SENTENCE in p.read_text(errors="replace") for p in SAMPLES.glob("*.eml"))
    caplog.set_level(logging.DEBUG)
    assert main(["-vv", "load", str(SAMPLES)]) == 0
    assert main(["-vv", "run", "--once"]) == 0
    logged = caplog.text + capsys.readouterr().err
    assert "action=reply" in logged  # the one line per message is there
    assert BODY_SENTENCE not in logged


def test_failed_imap_login_never_shows_the_password(workdir, imap_server, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TRIAGE_IMAP_HOST", imap_server.host)
    monkeypatch.setenv("TRIAGE_IMAP_PORT", str(imap_server.port))
    monkeypatch.setenv("TRIAGE_IMAP_TLS", "none")
    monkeypatch.setenv("TRIAGE_IMAP_USER", "someone@example.test")
    monkeypatch.setenv("TRIAGE_IMAP_PASSWORD", "Wr0ng-Pa55word")
    assert main(["-vv", "run", "--once"]) == 2
    err = capsys.readouterr().err
    assert "login failed for someone@example.test" in err
    assert "Wr0ng-Pa55word" not in err + caplog.text


def test_plain_text_imap_refused_off_loopback():
    with pytest.raises(ConfigError, match=r"'none' is refused for mail\.example\.org"):
        load_settings(_env_file=None, imap_host="mail.example.org", imap_user="u", imap_password="p", imap_tls="none")


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% include '/etc/passwd' %}",
        "{{ settings.imap_password }}",
        "<script>alert(1)</script>",
    ],
)
def test_message_content_is_data_not_template(hostile):
    composer = Composer(load_settings(_env_file=None, replies_dir=ROOT / "replies"))
    raw = (f"From: {hostile} <a@school.example.org>\r\nSubject: {hostile}\r\nMessage-ID: <h@x>\r\n\r\n"
           f"{hostile}\r\n").encode()
    message = composer.render(Decision("reply", ("glossary",), "t", 0.9), parse(raw)).reply
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert hostile in text  # quoted as written, never evaluated
    assert "root:" not in text and "<class" not in text
    assert "<script>" not in html


def test_refused_port_exits_2_with_one_line(workdir, capsys, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TRIAGE_IMAP_HOST", "127.0.0.1")
    monkeypatch.setenv("TRIAGE_IMAP_PORT", str(port))
    monkeypatch.setenv("TRIAGE_IMAP_TLS", "none")
    monkeypatch.setenv("TRIAGE_IMAP_USER", "someone@example.test")
    monkeypatch.setenv("TRIAGE_IMAP_PASSWORD", "x")
    assert main(["run", "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "refused" in err
