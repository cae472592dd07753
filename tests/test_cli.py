"""The command line end to end on the embedded default (a local Maildir), and --help of each."""

import csv
import email
import json
from email.policy import default

import pytest
from conftest import ROOT, SAMPLES

from triage.cli import build_parser, main

with (ROOT / "samples" / "labels.csv").open(newline="") as _fh:
    LABELS = {row["file"]: row for row in csv.DictReader(_fh)}


def _folder(path):
    files = [*path.glob("new/*"), *path.glob("cur/*")]
    return [email.message_from_bytes(f.read_bytes(), policy=default) for f in files]


def test_run_once_end_to_end(workdir, capsys):
    assert main(["load", str(SAMPLES)]) == 0
    originals = {p.name: p.read_bytes() for p in (workdir / "mail" / "new").iterdir()}
    assert len(originals) == len(LABELS)

    assert main(["run", "--once"]) == 0
    out = capsys.readouterr().out
    assert f"{len(LABELS)} new messages handled" in out
    assert "drafts are in mail/.Drafts/" in out

    drafts = _folder(workdir / "mail" / ".Drafts")
    by_source = {d["X-Triage-Source"]: d for d in drafts}
    assert len(by_source) == len(drafts)  # one draft per message
    samples = {}
    for name, row in LABELS.items():
        message = email.message_from_bytes((SAMPLES / name).read_bytes(), policy=default)
        samples[str(message["Message-ID"]).strip()] = row  # a folded one keeps its space
    for draft in drafts:
        row = samples[draft["In-Reply-To"]]  # threaded under a real sample
        assert row["kind"] != "automatic"
        assert draft["References"].endswith(draft["In-Reply-To"])
        assert draft["Subject"].startswith("Re: ")
        assert draft["X-Triage-Topic"]
        assert 0 <= float(draft["X-Triage-Confidence"]) <= 1
    automatic = [mid for mid, row in samples.items() if row["kind"] == "automatic"]
    assert automatic and not any(mid in by_source for mid in automatic)
    # most of the answerable samples got a draft (the quality bar itself is in test_samples.py)
    single = [mid for mid, row in samples.items() if row["kind"] == "single"]
    assert sum(mid in by_source for mid in single) >= 0.8 * len(single)

    # hand-offs are flagged (F) in the Maildir, their content untouched
    flagged = list((workdir / "mail" / "cur").glob("*:2,*F*"))
    assert flagged
    for path in [*flagged, *(workdir / "mail" / "new").iterdir()]:
        key = path.name.split(":")[0]
        assert path.read_bytes() == originals[key]

    # events are forwarded to the delivery partner as well, through the local outbox
    forwards = _folder(workdir / "mail" / ".Outbox")
    assert forwards and all(f["Auto-Submitted"] == "auto-replied" for f in forwards)

    # a second run finds nothing new and writes nothing
    assert main(["run", "--once"]) == 0
    assert "0 new messages handled" in capsys.readouterr().out
    assert len(_folder(workdir / "mail" / ".Drafts")) == len(drafts)


def test_dry_run_writes_nothing(workdir, capsys):
    assert main(["load", str(SAMPLES / "events-01.eml"), str(SAMPLES / "auto-ooo-01.eml")]) == 0
    assert main(["run", "--once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was written" in out
    assert "draft reply to" in out
    assert not (workdir / "triage.sqlite3").exists()
    assert not list((workdir / "mail" / ".Drafts").glob("*/*"))


def test_load_skips_what_is_there(workdir, capsys):
    assert main(["load", str(SAMPLES / "events-01.eml")]) == 0
    assert main(["load", str(SAMPLES / "events-01.eml")]) == 0
    assert "(1 already there)" in capsys.readouterr().out


def test_classify_json_contract(workdir, capsys):
    files = [SAMPLES / "events-01.eml", SAMPLES / "auto-ooo-01.eml"]
    assert main(["classify", "--json", *map(str, files), "--text", "How do I match mentors to ECTs on Steplab?"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for record in lines:
        assert set(record) >= {"source", "message_id", "topic", "topics", "confidence", "action", "reason", "text"}
    text, events, ooo = lines
    assert text["source"] == "--text" and text["topic"] == "mentor-matching" and text["action"] == "reply"
    assert events["topics"][0] == "events" and events["message_id"].startswith("<")
    assert ooo["action"] == "ignore" and ooo["topic"] is None and ooo["topics"] == []


def test_classify_directory_maildir_and_garbage(workdir, capsys):
    junk = workdir / "junk.eml"
    junk.write_bytes(b"\x00\x01\x02 not mail at all")
    assert main(["load", str(SAMPLES / "events-01.eml")]) == 0
    capsys.readouterr()
    assert main(["classify", "--json", str(junk), "mail"]) == 0
    junk_line, maildir_line = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert junk_line["action"] == "human" and "cannot be read" in junk_line["reason"]
    assert maildir_line["topic"] == "events"


def test_classify_explain(workdir, capsys):
    assert main(["classify", "--explain", "--text", "Our ECTs haven't had any emails from you, should IT add you to safe senders?"]) == 0
    out = capsys.readouterr().out
    assert "missing-emails" in out
    assert "deciding terms:" in out


def test_missing_model_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.setenv("TRIAGE_MODEL_PATH", str(workdir / "nope.joblib"))
    assert main(["classify", "--text", "hello"]) == 1
    assert capsys.readouterr().err == f"error: {workdir / 'nope.joblib'}: no model file; run 'triage train' (or set TRIAGE_MODEL_PATH)\n"


def test_nothing_to_classify_is_usage_error(workdir, capsys):
    assert main(["classify"]) == 2
    assert "nothing to classify" in capsys.readouterr().err


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: triage {command}")
    assert len(out.splitlines()) > 3


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in _commands():
        assert command in out




def test_evaluate_report_and_html(workdir, capsys):
    page = workdir / "report.html"
    assert main(["evaluate", str(SAMPLES), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "reply precision" in out and "coverage" in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "Confusion matrix" in html and 'class="matrix"' in html
    assert "Precision and recall per label" in html and 'class="bar p"' in html
    assert "Misclassified emails" in html
    assert "<script" not in html  # self-contained and inert


def test_evaluate_unlabelled_file_is_a_sample_error(workdir, capsys, tmp_path):
    stray = tmp_path / "stray" / "x.eml"
    stray.parent.mkdir()
    stray.write_bytes((SAMPLES / "events-01.eml").read_bytes())
    assert main(["evaluate", str(stray)]) == 1
    assert "no label; add a row for it to labels.csv beside it" in capsys.readouterr().err
