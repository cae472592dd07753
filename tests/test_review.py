"""``triage review`` and ``triage stats``: on the local Maildir through ``cli.main`` (the worker
makes the journal and the drafts), and against the real Dovecot (and aiosmtpd for approve)."""

from __future__ import annotations

import csv
import email
import json
from email.policy import default

import pytest
from conftest import REPLIES, ROOT, SAMPLES
from imapclient import IMAPClient

from triage import cli
from triage.classifier import model_text
from triage.config import load_settings
from triage.journal import Journal
from triage.query import parse
from triage.reply import POLICY
from triage.review import AUTO_SEND_MIN_REVIEWED

REPLY = "myect-login-01"  # the committed model drafts a reply
SECOND = "glossary-01"  # another reply
HUMAN = "other-data-request"  # handed off
AUTOMATIC = "auto-ooo-01"  # ignored
NAMES = (REPLY, SECOND, HUMAN, AUTOMATIC)


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


def message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Message-ID"]).strip()


def folder(path):
    """(name, parsed message) of every file in a Maildir folder."""
    files = sorted([*path.glob("new/*"), *path.glob("cur/*")])
    return [(f.name, email.message_from_bytes(f.read_bytes(), policy=default)) for f in files]


@pytest.fixture
def settings(local_settings, tmp_path):
    """The local Maildir settings, with a training directory of its own (corrections go there)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "paraphrases.csv").symlink_to(ROOT / "models" / "data" / "paraphrases.csv")
    return local_settings.model_copy(update={"training_dir": data})


@pytest.fixture
def triage(monkeypatch, capsys):
    """``triage ARGS`` through ``cli.main`` with the test's settings: (status, stdout, stderr)."""
    current = {}

    def use(settings):
        current["settings"] = settings
        monkeypatch.setattr(cli, "load_settings", lambda: current["settings"])

    def run(*argv):
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: bad usage
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    run.use = use
    return run


@pytest.fixture
def handled(settings, triage, tmp_path):
    """Four samples delivered to the Maildir and handled by ``triage run --once``: name -> entry."""
    triage.use(settings)
    for name in NAMES:
        assert triage("load", SAMPLES / f"{name}.eml")[0] == 0
    assert triage("run", "--once")[0] == 0
    journal = Journal(settings.state_db)
    entries = {e.message_id: e for e in journal}
    journal.close()
    found = {name: entries[message_id(sample(name))] for name in NAMES}
    assert found[REPLY].action == "reply" and found[SECOND].action == "reply"
    assert found[HUMAN].action == "human" and found[AUTOMATIC].action == "ignore"
    return found


def drafts(settings):
    return folder(settings.maildir / ".Drafts")


# --- review list --------------------------------------------------------------------------------


def test_list_is_a_table_newest_first(handled, triage):
    code, out, err = triage("review", "list")
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == [
        "id",
        "time",
        "(UTC)",
        "sender",
        "subject",
        "topics",
        "conf",
        "action",
        "status",
    ]
    assert [int(r.split()[0]) for r in rows] == sorted(
        (e.id for e in handled.values()), reverse=True
    )
    row = next(r for r in rows if int(r.split()[0]) == handled[REPLY].id)
    assert "myect-login" in row and " reply " in row and row.endswith("done")
    human = next(r for r in rows if int(r.split()[0]) == handled[HUMAN].id)
    assert " other " in human and " human " in human


def test_list_filters_and_json(handled, triage):
    code, out, _ = triage("review", "list", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == 4
    assert set(records[0]) == {
        "id",
        "time",
        "sender",
        "subject",
        "topics",
        "confidence",
        "action",
        "status",
        "review",
        "reason",
    }
    _, out, _ = triage("review", "list", "--json", "--action", "reply")
    assert {json.loads(x)["id"] for x in out.splitlines()} == {
        handled[REPLY].id,
        handled[SECOND].id,
    }
    _, out, _ = triage("review", "list", "--json", "--topic", "glossary")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [handled[SECOND].id]
    _, out, _ = triage("review", "list", "--json", "--topic", "other")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [handled[HUMAN].id]
    _, out, _ = triage("review", "list", "--json", "--limit", "1")
    assert len(out.splitlines()) == 1
    assert triage("review", "list", "--since", "2999-01-01") == (
        0,
        "no journal entries match\n",
        "",
    )
    _, out, _ = triage("review", "list", "--since", "2000-01-01")
    assert len(out.splitlines()) == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2024-13-01"], "argument --since: '2024-13-01' is not a date: use YYYY-MM-DD"),
        (["--limit", "0"], "argument --limit: '0' is not a positive whole number"),
        (["--action", "send"], "argument --action: invalid choice: 'send'"),
        (["--topic", "evnts"], "argument --topic: invalid choice: 'evnts'"),
    ],
)
def test_list_bad_usage_exits_2(handled, triage, argv, message):
    code, out, err = triage("review", "list", *argv)
    assert code == 2 and out == ""
    assert message in err


def test_no_journal_is_a_config_error(settings, triage):
    triage.use(settings)
    code, out, err = triage("review", "list")
    assert (code, out) == (2, "")
    assert err == (
        f"error: {settings.state_db}: no journal yet; run 'triage run' first, or set "
        "TRIAGE_STATE_DB to the worker's journal\n"
    )


def test_unknown_id_is_a_usage_error(handled, triage, settings):
    for command in ("show", "approve", "discard"):
        code, _, err = triage("review", command, "999")
        assert code == 2
        assert err == (
            f"error: no journal entry 999 in {settings.state_db}; "
            "'triage review list' shows the ids\n"
        )
    code, _, err = triage("review", "show", "x")
    assert code == 2 and "argument ID: invalid int value: 'x'" in err


# --- review show --------------------------------------------------------------------------------


def test_show_text_why_and_draft(handled, triage):
    entry = handled[REPLY]
    code, out, err = triage("review", "show", entry.id)
    assert code == 0 and err == ""
    query = parse(sample(REPLY))
    assert out.startswith(f"entry {entry.id}: reply myect-login ({entry.confidence:.2f}), done\n")
    assert "new text it read:\n" in out
    assert "\n".join(f"  | {line}".rstrip() for line in query.text.splitlines()) in out
    assert "why (the installed model, now):\n  scores:         myect-login " in out
    assert "\n  deciding terms: " in out
    assert "draft (in Drafts):\n" in out
    assert f"  In-Reply-To: {entry.message_id}\n" in out
    assert "  X-Triage-Topic: myect-login\n" in out
    assert "  | Thank you for your email." in out


def test_show_says_when_the_original_and_draft_are_gone(handled, triage, settings):
    entry = handled[HUMAN]
    for path in [*(settings.maildir / "new").iterdir(), *(settings.maildir / "cur").iterdir()]:
        if path.name.startswith(entry.uid):
            path.unlink()
    code, out, _ = triage("review", "show", entry.id)
    assert code == 0
    assert "new text it read: the original is no longer in INBOX (moved or deleted)\n" in out
    assert "why" not in out
    assert out.endswith("draft: none in Drafts (sent, discarded, or none was made)\n")


# --- review approve -----------------------------------------------------------------------------


def test_approve_sends_the_draft_as_it_is(handled, triage, settings):
    entry = handled[REPLY]
    [(name, _)] = [(n, d) for n, d in drafts(settings) if d["X-Triage-Source"] == entry.message_id]
    raw = next((settings.maildir / ".Drafts").glob(f"*/{name}")).read_bytes()
    code, out, err = triage("review", "approve", entry.id)
    assert code == 0 and err == ""
    assert out.startswith(f"entry {entry.id}: sent the draft to ")
    assert "the draft is gone from Drafts" in out
    outbox = [p.read_bytes() for p in (settings.maildir / ".Outbox" / "new").iterdir()]
    assert raw in outbox  # byte for byte
    [sent] = [p.read_bytes() for p in (settings.maildir / ".Sent" / "cur").iterdir()]
    assert sent == raw
    assert all(d["X-Triage-Source"] != entry.message_id for _, d in drafts(settings))
    journal = Journal(settings.state_db)
    [review] = journal.reviews(entry.id)
    assert (review.verdict, review.source, review.similarity) == ("unchanged", "approve", 1.0)
    assert review.model_topics == ("myect-login",)
    assert journal.get(entry.id).outcome.startswith("approved by staff: sent via ")
    journal.close()
    # a second approve sends nothing again
    code, out, _ = triage("review", "approve", entry.id)
    assert code == 0 and "already approved and sent" in out
    assert len(list((settings.maildir / ".Outbox" / "new").iterdir())) == len(outbox)
    _, out, _ = triage("review", "list")
    assert any(
        r.startswith(f"{entry.id:>5}") and r.endswith("sent as drafted") for r in out.splitlines()
    )


def test_approve_of_a_draft_edited_in_the_mail_client_counts_as_changed(handled, triage, settings):
    entry = handled[SECOND]
    [path] = [
        p
        for p in (settings.maildir / ".Drafts" / "cur").iterdir()
        if entry.message_id.encode() in p.read_bytes()
    ]
    draft = email.message_from_bytes(path.read_bytes(), policy=POLICY)
    body = draft.get_body(("plain",))
    body.set_content(body.get_content().replace("Thank you for your email.", "Thanks for asking!"))
    path.write_bytes(draft.as_bytes())
    assert triage("review", "approve", entry.id)[0] == 0
    journal = Journal(settings.state_db)
    [review] = journal.reviews(entry.id)
    journal.close()
    assert review.verdict == "changed" and 0.9 < review.similarity < 1.0


def test_approve_without_a_draft_fails(handled, triage):
    entry = handled[HUMAN]
    code, out, err = triage("review", "approve", entry.id)
    assert (code, out) == (1, "")
    assert err == (
        f"error: entry {entry.id}: no draft in Drafts for {entry.message_id} (sent, discarded, or "
        f"none was made); see 'triage review show {entry.id}'\n"
    )


# --- review correct -----------------------------------------------------------------------------


def corrections(settings):
    path = settings.training_dir / "corrections.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_correct_records_the_label_and_replaces_the_draft(handled, triage, settings):
    entry = handled[REPLY]
    code, out, err = triage("review", "correct", entry.id, "--topic", "missing-on-steplab")
    assert code == 0 and err == ""
    assert (
        out.splitlines()[0]
        == f"entry {entry.id}: corrected to missing-on-steplab (was myect-login)"
    )
    [row] = corrections(settings)
    assert row["topic"] == "missing-on-steplab"
    assert row["text"] == model_text(parse(sample(REPLY))).strip()  # read as classification reads
    assert row["message_id"] == entry.message_id and row["source"] == f"review {entry.id}"
    [draft] = [d for _, d in drafts(settings) if d["X-Triage-Source"] == entry.message_id]
    assert draft["X-Triage-Topic"] == "missing-on-steplab"
    assert draft["In-Reply-To"] == entry.message_id
    assert draft["References"].split()[-1] == entry.message_id
    assert draft["Subject"].startswith("Re: ")
    journal = Journal(settings.state_db)
    changed = journal.get(entry.id)
    assert changed.topics == ("missing-on-steplab",) and changed.action == "reply"
    [review] = journal.reviews(entry.id)
    assert (review.verdict, review.model_topics, review.topics) == (
        "corrected",
        ("myect-login",),
        ("missing-on-steplab",),
    )
    assert journal.draft_text(entry.message_id).startswith("Dear ")
    journal.close()
    # the same label again is bad usage; the row is not written twice
    code, _, err = triage("review", "correct", entry.id, "--topic", "missing-on-steplab")
    assert code == 2
    assert err == (
        f"error: entry {entry.id} is already labelled missing-on-steplab; to send its draft use "
        f"'triage review approve {entry.id}'\n"
    )
    # another label replaces the row (the latest word of staff counts)
    assert (
        triage("review", "correct", entry.id, "--topic", "myect-login", "--topic", "glossary")[0]
        == 0
    )
    [row] = corrections(settings)
    assert row["topic"] == "myect-login"
    [draft] = [d for _, d in drafts(settings) if d["X-Triage-Source"] == entry.message_id]
    assert draft["X-Triage-Topic"] == "myect-login,glossary"


def test_correct_to_other_hands_off(handled, triage, settings):
    entry = handled[SECOND]
    code, out, err = triage("review", "correct", entry.id, "--topic", "other")
    assert code == 0 and err == ""
    assert "1 draft removed; flagged for a human" in out
    assert all(d["X-Triage-Source"] != entry.message_id for _, d in drafts(settings))
    flagged = [p for p in (settings.maildir / "cur").iterdir() if p.name.startswith(entry.uid)]
    assert flagged and flagged[0].name.endswith("F")
    assert flagged[0].read_bytes() == sample(SECOND)  # content untouched
    assert corrections(settings)[0]["topic"] == "other"
    journal = Journal(settings.state_db)
    assert journal.get(entry.id).action == "human" and journal.get(entry.id).topics == ()
    journal.close()


def test_correct_a_hand_off_makes_a_draft(handled, triage, settings):
    entry = handled[HUMAN]
    code, out, _ = triage("review", "correct", entry.id, "--topic", "change-details")
    assert code == 0 and "draft for change-details saved" in out
    [draft] = [d for _, d in drafts(settings) if d["X-Triage-Source"] == entry.message_id]
    assert draft["X-Triage-Topic"] == "change-details"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--topic", "other", "--topic", "events"],
            "error: --topic other means none of the FAQ topics: give it alone, "
            "or give only topics\n",
        ),
        (["--topic", "evnts"], "argument --topic: invalid choice: 'evnts'"),
        ([], "the following arguments are required: --topic"),
    ],
)
def test_correct_bad_usage(handled, triage, argv, message):
    code, _, err = triage("review", "correct", handled[REPLY].id, *argv)
    assert code == 2 and message in err


def test_correct_refuses_automatic_mail_and_a_gone_original(handled, triage, settings):
    entry = handled[AUTOMATIC]
    code, _, err = triage("review", "correct", entry.id, "--topic", "events")
    assert code == 2 and err.startswith(f"error: entry {entry.id} was not read as a question (")
    entry = handled[REPLY]
    for path in [*(settings.maildir / "new").iterdir(), *(settings.maildir / "cur").iterdir()]:
        if path.name.startswith(entry.uid):
            path.unlink()
    code, _, err = triage("review", "correct", entry.id, "--topic", "events")
    assert code == 1
    assert err == (
        f"error: entry {entry.id}: the original is no longer in INBOX, so its text cannot be "
        "recorded; move it back, or file it in Triage/<topic> and run 'triage learn'\n"
    )


# --- review discard -----------------------------------------------------------------------------


def test_discard_removes_the_draft(handled, triage, settings):
    entry = handled[REPLY]
    assert triage("review", "discard", entry.id) == (
        0,
        f"entry {entry.id}: draft discarded (1 removed from Drafts)\n",
        "",
    )
    assert all(d["X-Triage-Source"] != entry.message_id for _, d in drafts(settings))
    code, _, err = triage("review", "discard", entry.id)
    assert code == 1 and err.startswith(f"error: entry {entry.id}: no draft in Drafts for ")
    journal = Journal(settings.state_db)
    assert [r.verdict for r in journal.reviews(entry.id)] == ["discarded"]
    assert journal.get(entry.id).outcome == "draft discarded by staff"
    journal.close()


@pytest.mark.parametrize("command", ["list", "show", "approve", "correct", "discard"])
def test_every_review_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["review", command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: triage review {command}")


# --- triage stats -------------------------------------------------------------------------------


def test_stats_counts_and_live_precision(handled, triage):
    triage("review", "approve", handled[REPLY].id)
    triage("review", "correct", handled[SECOND].id, "--topic", "other")
    code, out, err = triage("stats")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].endswith(": 4 messages in all")
    assert lines[1] == "by action: reply 1, forward 0, human 2, ignore 1"
    assert lines[2] == "hand-off rate: 66.7% (2 of 3 messages from people)"
    table = {line.split()[0]: line.split()[1:] for line in lines[5:] if line and line[0] != " "}
    assert table["myect-login"] == ["1", "1", "1", "(100%)", "0", "(0%)", "0", "(0%)", "0", "(0%)"]
    assert table["glossary"][:2] == ["0", "1"] and table["glossary"][6:8] == ["1", "(100%)"]
    assert "  earned: none yet" in lines
    code, out, _ = triage("stats", "--json")
    stats = json.loads(out)
    assert stats["actions"] == {"reply": 1, "forward": 0, "human": 2, "ignore": 1}
    assert stats["topics"]["myect-login"]["unchanged_share"] == 1.0
    assert stats["earned_auto_send"] == []
    assert triage("stats", "--since", "2999-01-01")[1].splitlines()[2] == (
        "hand-off rate: - (no messages from people)"
    )


def test_stats_says_which_topics_earned_automatic_sending(settings, triage):
    triage.use(settings)
    journal = Journal(settings.state_db)
    for n in range(AUTO_SEND_MIN_REVIEWED):
        for topic, bad in (("glossary", 0), ("events", 2)):
            entry = journal.begin("INBOX", 1, f"{topic}{n}", action="reply", topics=(topic,))
            journal.finish(entry)
            journal.record_review(entry, "changed" if n < bad else "unchanged", source="learn")
    entry = journal.begin("INBOX", 1, "few", action="reply", topics=("transfers",))
    journal.finish(entry)
    journal.record_review(entry, "unchanged", source="approve")
    journal.close()
    code, out, _ = triage("stats")
    assert code == 0
    assert "  earned: glossary\n" in out
    assert (
        "  not yet: transfers (1 reviewed, 100% unchanged), events (50 reviewed, 96% unchanged)"
        in out
    )
    assert "without that evidence: myect-vs-steplab\n" in out
    assert json.loads(triage("stats", "--json")[1])["earned_auto_send"] == ["glossary"]


def test_stats_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stats", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: triage stats")
    assert "(at least 50 reviewed drafts, 98% sent unchanged)" in out


# --- against the real Dovecot -------------------------------------------------------------------


def imap_settings(server, user, tmp_path, **more):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if not (data / "paraphrases.csv").exists():
        (data / "paraphrases.csv").symlink_to(ROOT / "models" / "data" / "paraphrases.csv")
    return load_settings(
        _env_file=None,
        imap_host=server.host,
        imap_port=server.port,
        imap_tls="none",
        imap_user=user,
        imap_password="secret",
        maildir=tmp_path / "mail",
        state_db=tmp_path / "triage.sqlite3",
        model_path=ROOT / "models" / "triage.joblib",
        replies_dir=REPLIES,
        training_dir=data,
        **more,
    )


def imap(server, user):
    client = IMAPClient(server.host, server.port, ssl=False, timeout=10)
    client.login(user, server.password)
    return client


def messages(server, user, name):
    """uid -> (flags without \\Recent, parsed message) of an IMAP folder."""
    with imap(server, user) as client:
        client.select_folder(name, readonly=True)
        found = client.fetch(client.search(["UNDELETED"]), ["FLAGS", "BODY.PEEK[]"])
    return {
        uid: (
            set(data[b"FLAGS"]) - {b"\\Recent"},
            email.message_from_bytes(data[b"BODY[]"], policy=default),
        )
        for uid, data in found.items()
    }


@pytest.fixture
def on_imap(imap_server, imap_user, tmp_path, triage):
    """Two samples in a fresh IMAP INBOX, handled by ``triage run --once``: name -> entry."""
    settings = imap_settings(imap_server, imap_user, tmp_path)
    triage.use(settings)
    with imap(imap_server, imap_user) as client:
        for name in (REPLY, HUMAN):
            client.append("INBOX", sample(name))
    assert triage("run", "--once")[0] == 0
    journal = Journal(settings.state_db)
    entries = {e.message_id: e for e in journal}
    journal.close()
    return settings, {name: entries[message_id(sample(name))] for name in (REPLY, HUMAN)}


def test_imap_drafts_are_threaded_with_the_draft_flag(on_imap, imap_server, imap_user, triage):
    _, entries = on_imap
    [(flags, draft)] = messages(imap_server, imap_user, "Drafts").values()
    assert b"\\Draft" in flags
    original = entries[REPLY].message_id
    assert draft["In-Reply-To"] == original
    assert draft["References"].split()[-1] == original
    assert draft["Subject"] == "Re: " + parse(sample(REPLY)).subject.removeprefix("Re: ")
    assert draft["X-Triage-Source"] == original
    code, out, _ = triage("review", "show", entries[REPLY].id)
    assert code == 0
    assert "new text it read:\n  | " in out and "draft (in Drafts):\n" in out
    assert f"  In-Reply-To: {original}\n" in out


def test_imap_correct_and_approve_over_smtp(on_imap, imap_server, imap_user, triage, smtp_server):
    settings, entries = on_imap
    entry = entries[HUMAN]
    code, out, _ = triage("review", "correct", entry.id, "--topic", "change-details")
    assert code == 0 and "draft for change-details saved: Drafts uid " in out
    drafts_now = messages(imap_server, imap_user, "Drafts")
    [(flags, draft)] = [
        v for v in drafts_now.values() if v[1]["X-Triage-Source"] == entry.message_id
    ]
    assert b"\\Draft" in flags and draft["X-Triage-Topic"] == "change-details"
    assert draft["In-Reply-To"] == entry.message_id

    settings = settings.model_copy(
        update={"smtp_host": smtp_server.host, "smtp_port": smtp_server.port, "smtp_tls": "none"}
    )
    triage.use(settings)
    code, out, err = triage("review", "approve", entry.id)
    assert code == 0, err
    assert f"via smtp {smtp_server.host}:{smtp_server.port}" in out
    [received] = smtp_server.received
    assert received.message["Message-ID"] == draft["Message-ID"]
    assert received.rcpt_tos == ("stefan.mueller@mail.example.com",)
    [(flags, copy)] = messages(imap_server, imap_user, "Sent").values()
    assert b"\\Seen" in flags and copy["Message-ID"] == draft["Message-ID"]
    assert all(
        d["X-Triage-Source"] != entry.message_id
        for _, d in messages(imap_server, imap_user, "Drafts").values()
    )
    # discard the other draft; show says it is gone
    other = entries[REPLY]
    assert triage("review", "discard", other.id)[0] == 0
    assert messages(imap_server, imap_user, "Drafts") == {}
    assert triage("review", "show", other.id)[1].endswith(
        "draft: none in Drafts (sent, discarded, or none was made)\n"
    )
