"""Settings: TRIAGE_ variables, .env, and one clear line for each bad value."""

import pytest

from triage.cli import main
from triage.config import Settings, is_loopback, load_settings
from triage.errors import ConfigError


def test_defaults_are_the_local_maildir():
    settings = load_settings(_env_file=None)
    assert settings.imap_host is None
    assert settings.mode == "draft"
    assert settings.imap_effective_port == 993
    assert load_settings(_env_file=None, imap_tls="starttls").imap_effective_port == 143


def test_environment_and_env_file(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("TRIAGE_POLL_SECONDS=5\nTRIAGE_MODE=send\n")
    monkeypatch.setenv("TRIAGE_IMAP_FOLDER", "Support")
    settings = Settings(_env_file=env)
    assert settings.poll_seconds == 5
    assert settings.mode == "send"
    assert settings.imap_folder == "Support"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TRIAGE_IMAP_PORT": "abc"}, "TRIAGE_IMAP_PORT: 'abc' is not valid"),
        ({"TRIAGE_IMAP_TLS": "maybe"}, "TRIAGE_IMAP_TLS: 'maybe' is not valid: input should be 'ssl', 'starttls' or 'none'"),
        ({"TRIAGE_IMAP_HOST": "mail.example.org", "TRIAGE_IMAP_USER": "u"},
         "TRIAGE_IMAP_PASSWORD: required when TRIAGE_IMAP_HOST is set"),
        ({"TRIAGE_IMAP_HOST": "mail.example.org", "TRIAGE_IMAP_USER": "u", "TRIAGE_IMAP_PASSWORD": "p",
          "TRIAGE_IMAP_TLS": "none"}, "TRIAGE_IMAP_TLS: 'none' is refused for mail.example.org"),
        ({"TRIAGE_POLL_SECONDS": "0"}, "TRIAGE_POLL_SECONDS: '0' is not valid: input should be greater than 0"),
        ({"TRIAGE_MODE": "yolo"}, "TRIAGE_MODE: 'yolo' is not valid"),
    ],
)
def test_bad_values_exit_2_with_one_line(env, expected, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad configuration: ")
    assert expected in err
    assert err.count("\n") == 1  # one line, no traceback


def test_password_never_printed(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIAGE_IMAP_HOST", "127.0.0.1")
    monkeypatch.setenv("TRIAGE_IMAP_USER", "support")
    monkeypatch.setenv("TRIAGE_IMAP_PASSWORD", "hunter2-secret")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "TRIAGE_IMAP_PASSWORD=********" in out
    assert "hunter2-secret" not in out
    assert "TRIAGE_IMAP_HOST=127.0.0.1" in out


def test_bad_password_value_is_not_echoed(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, imap_host="mail.example.org", imap_user="u",
                      imap_password="s3cret!", imap_tls="none")
    assert "s3cret!" not in str(info.value)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.1.2.3", True), ("10.0.0.1", False), ("mail.example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
