"""``triage learn`` and the training gate: corrections.csv, the Triage/<topic> folders, what staff
sent, the held-out split and ``compare``; on the local Maildir and against the real Dovecot, with
the whole loop: a misclassified message filed in its right folder -> learn -> train -> right."""

from __future__ import annotations

import csv
import email
import random
import re
import subprocess
import sys

import pytest
from conftest import REPLIES, ROOT, SAMPLES
from imapclient import IMAPClient

from triage import cli, learning, training
from triage.classifier import model_text
from triage.config import load_settings
from triage.journal import Journal
from triage.maildir import LocalMailbox
from triage.query import parse
from triage.reply import POLICY
from triage.topics import LABELS

REPLY = "myect-login-01"  # the committed model drafts a reply
AUTOMATIC = "auto-ooo-01"
# Written for this test (not a sample): the committed model hands it off as "other", but it is
# the missing-emails question ("my ECTs have had no emails from you").
MISCLASSIFIED = b"""\
From: Deb Lowe <deb.lowe@hillside-primary.example.sch.uk>
To: support@ect.example.org
Subject: Quick question
Date: Mon, 02 Feb 2026 09:15:00 +0000
Message-ID: <loop-1@hillside-primary.example.sch.uk>
Content-Type: text/plain; charset="utf-8"

Nobody at our place has heard a thing from you lot since the summer, is there something wrong
with our account?

Thanks
Deb
"""


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


def message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Message-ID"]).strip()


def rows(directory):
    with (directory / "corrections.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def data(tmp_path):
    """A training directory: the repo's paraphrases, corrections written here."""
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "paraphrases.csv").symlink_to(ROOT / "models" / "data" / "paraphrases.csv")
    return directory


@pytest.fixture
def triage(monkeypatch, capsys):
    """``triage ARGS`` through ``cli.main`` with the given settings: (status, stdout, stderr)."""
    current = {}

    def run(settings, *argv):
        current["settings"] = settings
        monkeypatch.setattr(cli, "load_settings", lambda: current["settings"])
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def settings(local_settings, data):
    return local_settings.model_copy(update={"training_dir": data})


# --- corrections.csv ----------------------------------------------------------------------------


def test_corrections_dedupe_relabel_and_keep_out_paraphrase_text(data):
    paraphrase = training.read_examples(data / "paraphrases.csv")[0]
    corrections = learning.Corrections(data)
    assert (
        corrections.add("events", "Who do I tell about missing the day?", message_id="<a@x>")
        == "added"
    )
    assert (
        corrections.add("events", "Who do I tell about missing the day?", message_id="<a@x>")
        == "present"
    )
    assert (
        corrections.add("events", "WHO do I tell, about missing the day", source="again")
        == "present"
    )
    assert (
        corrections.add("glossary", "Who do I tell about missing the day?", message_id="<a@x>")
        == "replaced"
    )
    assert corrections.add(paraphrase.label, paraphrase.text.upper()) == "present"
    other = next(label for label in LABELS if label != paraphrase.label)
    assert corrections.add(other, paraphrase.text) == "in paraphrases"
    assert (
        corrections.add("events", "A second, different question about the conference?") == "added"
    )
    corrections.save()
    assert [(r["topic"], r["message_id"]) for r in rows(data)] == [
        ("glossary", "<a@x>"),
        ("events", ""),
    ]
    assert list(rows(data)[0]) == list(learning.CORRECTION_COLUMNS)
    # training reads them as examples beside the paraphrases
    examples = training.load_data(data)
    assert [e.label for e in examples[-2:]] == ["glossary", "events"]
    assert examples[-1].source == "corrections.csv:3"
    with pytest.raises(training.SampleError, match="unknown topic 'evnts'"):
        corrections.add("evnts", "text")


def test_the_commands_load_no_scikit_learn():
    """``learn`` and ``review`` are built into every ``triage`` command line; training (and
    scikit-learn with it) must stay out of a plain ``triage classify``."""
    assert learning.CORRECTIONS == training.CORRECTIONS
    code = "import sys; from triage import cli; cli.build_parser(); print('sklearn' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "False\n"


def test_similarity_counts_words_not_wrapping_or_quote_marks():
    draft = "Dear Ann,\n\nThank you for your email.\n\n> your question\n> here"
    assert (
        learning.similarity(draft, "Dear Ann, Thank you\nfor your email.\n>> your question here")
        == 1.0
    )
    changed = learning.similarity(
        draft, "Dear Ann,\n\nThanks for your email.\n\n> your question\n> here"
    )
    assert 0.8 < changed < 1.0
    assert learning.similarity(draft, "Something else entirely") < 0.2


def test_split_holds_out_a_fifth_of_each_label_for_good():
    examples = training.load_data(ROOT / "models" / "data")
    train, held = learning.split(examples)
    assert len(train) + len(held) == len(examples) and not set(train) & set(held)
    for label in LABELS:
        n = sum(e.label == label for e in examples)
        assert sum(e.label == label for e in held) == int(n * learning.HELD_OUT_FRACTION)
    assert learning.split(list(reversed(examples)))[1] == list(reversed(held))  # order-free


# --- triage learn on the local Maildir ----------------------------------------------------------


def test_learn_needs_its_folders(settings, triage):
    code, out, err = triage(settings, "learn")
    assert (code, out) == (2, "")
    assert err == (
        f"error: maildir {settings.maildir}/: no Triage folders; run 'triage learn --setup' to "
        "create them, then file misclassified messages there\n"
    )


def test_learn_setup_makes_maildir_folders(settings, triage):
    code, out, _ = triage(settings, "learn", "--setup")
    assert code == 0
    assert out.splitlines()[0] == (
        f"maildir {settings.maildir}/: 16 folders created, 0 already there "
        "(Triage.glossary ... Triage.other)"
    )
    for label in LABELS:
        assert (settings.maildir / f".Triage.{label}" / "cur").is_dir()
    assert "0 folders created, 16 already there" in triage(settings, "learn", "--setup")[1]


def test_learn_harvests_folders_once(settings, triage):
    triage(settings, "learn", "--setup")
    box = LocalMailbox(settings.maildir)
    box.add(MISCLASSIFIED, folder="Triage.missing-emails")
    box.add(sample(AUTOMATIC), folder="Triage.other")
    code, out, _ = triage(settings, "learn")
    assert code == 0
    assert out.splitlines() == [
        "corrections from Triage.<topic>:",
        f"  {'missing-emails':<24}1 new",
        f"  {'other':<24}1 skipped (automatic mail or no text)",
        f"1 new in {settings.training_dir / 'corrections.csv'}; "
        "run 'triage train' to learn from them",
        "Sent: 0 new replies that began as our drafts",
    ]
    [row] = rows(settings.training_dir)
    assert row["topic"] == "missing-emails"
    assert row["text"] == model_text(parse(MISCLASSIFIED)).strip()  # as classification reads it
    assert row["message_id"] == message_id(MISCLASSIFIED)
    assert row["source"] == "learn Triage.missing-emails"
    # again: nothing new; filed under another topic: relabelled
    _, out, _ = triage(settings, "learn")
    assert f"  {'missing-emails':<24}1 already there" in out
    assert "nothing new for" in out
    for path in (settings.maildir / ".Triage.missing-emails" / "new").iterdir():
        path.unlink()  # staff move it on to another folder
    box.add(MISCLASSIFIED, folder="Triage.myect-login")
    _, out, _ = triage(settings, "learn")
    [row] = rows(settings.training_dir)
    assert row["topic"] == "myect-login"
    assert f"  {'myect-login':<24}1 relabelled\n" in out


def test_learn_reads_what_staff_sent(settings, triage):
    for name in (REPLY, "glossary-01"):
        triage(settings, "load", SAMPLES / f"{name}.eml")
    assert triage(settings, "run", "--once")[0] == 0
    triage(settings, "learn", "--setup")
    box = LocalMailbox(settings.maildir)
    journal = Journal(settings.state_db)
    entries = {e.message_id: e for e in journal}
    journal.close()
    drafts = {}
    for path in (settings.maildir / ".Drafts" / "cur").iterdir():
        message = email.message_from_bytes(path.read_bytes(), policy=POLICY)
        drafts[str(message["X-Triage-Source"])] = (path, message)
    # staff send the first as it is (from their mail client: a new Message-ID, the source kept)
    first = entries[message_id(sample(REPLY))]
    _, message = drafts[first.message_id]
    message.replace_header("Message-ID", "<sent-1@ect.example.org>")
    box.add(message.as_bytes(), folder="Sent", flags="S")
    # ... and edit the second one; their client drops our header, In-Reply-To remains
    second = entries[message_id(sample("glossary-01"))]
    _, message = drafts[second.message_id]
    del message["X-Triage-Source"]
    message.replace_header("Message-ID", "<sent-2@ect.example.org>")
    text = message.get_body(("plain",))
    text.set_content(
        text.get_content().replace(
            "Thank you for your email.", "Thanks for writing in - good question!"
        )
    )
    box.add(message.as_bytes(), folder="Sent", flags="S")
    # the worker's own automatic sends are not reviews
    auto = email.message_from_bytes(sample(REPLY), policy=POLICY)
    auto["Auto-Submitted"] = "auto-replied"
    auto["X-Triage-Source"] = first.message_id
    box.add(auto.as_bytes(), folder="Sent")

    code, out, _ = triage(settings, "learn")
    assert code == 0
    assert re.search(
        r"Sent: 2 new replies that began as our drafts: 1 sent unchanged, 1 changed "
        r"\(similarity 0\.9\d on average\)\n",
        out,
    ), out
    journal = Journal(settings.state_db)
    [sent_as_is] = journal.reviews(first.id)
    assert (sent_as_is.verdict, sent_as_is.similarity, sent_as_is.sent_message_id) == (
        "unchanged",
        1.0,
        "<sent-1@ect.example.org>",
    )
    [edited] = journal.reviews(second.id)
    assert edited.verdict == "changed" and 0.9 < edited.similarity < 1.0
    journal.close()
    assert (
        "Sent: 0 new replies that began as our drafts; 2 counted before"
        in triage(settings, "learn")[1]
    )


def test_learn_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["learn", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: triage learn [-h] [--setup]")


# --- the gate, alone ----------------------------------------------------------------------------


def test_gate_holds_out_corrections_and_samples_only():
    examples = training.load_data(ROOT / "models" / "data")
    corrections = [training.Example("events", f"correction number {i} about an event", f"corrections.csv:{i}")
                   for i in range(10)]
    trained, held = learning.gate_split([*examples, *corrections])
    assert len(trained) == len(examples) + 8 and len(held) == 2
    assert all(ex.source.startswith("corrections.csv") for ex in held)
    emails = learning.held_out_emails(ROOT / "samples" / "inbox", support_address="support@ect.example.org")
    assert emails and all(ex.source.startswith("inbox/") for ex in emails)


def test_compare_without_an_installed_model_accepts(model):
    held = learning.split(training.load_data(ROOT / "models" / "data"))[1]
    lines, accept = learning.compare(model, None, held[:60])
    assert accept and lines[-1] == "accepted: no model is installed yet"
    assert lines[0] == (
        "held-out data: 60 examples never trained on, 0 of them staff corrections"
    )
    with pytest.raises(training.SampleError, match="no held-out examples"):
        learning.compare(model, model, [])


# --- against the real Dovecot: folders, and the whole loop --------------------------------------


def imap_settings(server, user, tmp_path, data):
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
    )


def imap(server, user):
    client = IMAPClient(server.host, server.port, ssl=False, timeout=10)
    client.login(user, server.password)
    return client


def test_learn_setup_on_imap(imap_server, imap_user, tmp_path, data, triage):
    settings = imap_settings(imap_server, imap_user, tmp_path, data)
    code, out, _ = triage(settings, "learn", "--setup")
    assert code == 0
    assert out.splitlines()[0] == (
        f"imap {imap_user}@{imap_server.host}:{imap_server.port}: 16 folders created, 0 already "
        "there (Triage/glossary ... Triage/other)"
    )
    with imap(imap_server, imap_user) as client:
        names = {name for _, _, name in client.list_folders()}
        subscribed = {name for _, _, name in client.list_sub_folders()}
    wanted = {f"Triage/{label}" for label in LABELS}
    assert wanted <= names and wanted <= subscribed
    assert "0 folders created, 16 already there" in triage(settings, "learn", "--setup")[1]


def test_the_loop_misclassified_moved_learned_trained_right(
    imap_server, imap_user, tmp_path, data, triage, model
):
    settings = imap_settings(imap_server, imap_user, tmp_path, data)
    query = parse(MISCLASSIFIED)
    assert model.classify(query).topic != "missing-emails", "pick a message the model gets wrong"
    with imap(imap_server, imap_user) as client:
        client.append("INBOX", MISCLASSIFIED)
        client.append("INBOX", sample(REPLY))
    assert triage(settings, "run", "--once")[0] == 0
    assert triage(settings, "learn", "--setup")[0] == 0
    journal = Journal(settings.state_db)
    entry = journal.by_message_id(query.message_id)
    journal.close()
    assert entry.action == "human"  # handed off: nobody answered it

    # staff move it to its right folder, and send our other draft after editing it
    with imap(imap_server, imap_user) as client:
        client.select_folder("INBOX")
        [uid] = client.search(["HEADER", "Message-ID", query.message_id])
        client.move([uid], "Triage/missing-emails")
        client.select_folder("Drafts")
        [(draft_uid, data_)] = client.fetch(client.search(["ALL"]), ["BODY.PEEK[]"]).items()
        draft = email.message_from_bytes(data_[b"BODY[]"], policy=POLICY)
        del draft["X-Triage-Source"]
        draft.replace_header("Message-ID", "<staff-sent@ect.example.org>")
        body = draft.get_body(("plain",))
        body.set_content("Hi,\n\nTry the link in your welcome email.\n\nECT Support")
        client.append("Sent", draft.as_bytes(), flags=[b"\\Seen"])
        client.delete_messages([draft_uid])
        client.expunge()

    code, out, _ = triage(settings, "learn")
    assert code == 0
    assert f"  {'missing-emails':<24}1 new\n" in out
    assert "Sent: 1 new replies that began as our drafts: 0 sent unchanged, 1 changed" in out
    [row] = rows(data)
    assert (row["topic"], row["text"]) == ("missing-emails", model_text(query).strip())
    journal = Journal(settings.state_db)
    assert [r.verdict for r in journal.reviews(entry.id)] == ["corrected"]
    journal.close()

    # retrain as `triage train` does behind the gate: on all but the held-out part
    examples = training.load_data(data)
    train, held = learning.split(examples)
    assert any(e.source.startswith("corrections.csv") for e in train)
    better = training.train(train, folds=3).model
    result = better.classify(query)
    assert result.topics and result.topics[0] == "missing-emails"

    # a deliberately worse training set (half of the labels shuffled) is refused by the gate
    rng = random.Random(6)
    chosen = rng.sample(range(len(train)), len(train) // 2)
    labels = [train[i].label for i in chosen]
    rng.shuffle(labels)
    worse_data = list(train)
    for i, label in zip(chosen, labels, strict=True):
        worse_data[i] = training.Example(label, train[i].text, train[i].source)
    worse = training.train(worse_data, folds=3).model
    lines, accept = learning.compare(worse, better, held)
    assert not accept
    assert lines[-1].startswith("refused: the new model is worse on macro-F1 (")
    assert any(line.startswith("macro-F1 ") for line in lines)
    assert any(line.startswith("reply precision ") for line in lines)
    _, accept = learning.compare(better, worse, held)
    assert accept
