"""Journal: one row per message, reruns are no-ops, migrations are versioned."""

import sqlite3

import pytest

from triage.errors import ConfigError, TriageError
from triage.journal import MIGRATIONS, Journal


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "state" / "triage.sqlite3")
    yield j
    j.close()


def test_schema_version_is_set(journal):
    assert journal.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_intent_then_outcome(journal):
    entry = journal.begin("INBOX", 7, "12", message_id="<a@x>", action="reply", topics=("events",),
                          confidence=0.9, reason="topics: events")
    assert journal.handled("INBOX", 7, ["12"]) == set()  # pending is not finished
    journal.finish(entry, outcome="draft Drafts uid 1")
    assert journal.handled("INBOX", 7, ["12", "13"]) == {"12"}
    found = journal.find("INBOX", 7, "12")
    assert found.status == "done"
    assert found.topics == ("events",)
    assert journal.by_message_id("<a@x>").id == entry


def test_pending_row_is_reused_and_finished_row_refused(journal):
    first = journal.begin("INBOX", 1, "5", action="reply")
    again = journal.begin("INBOX", 1, "5", action="human")
    assert first == again
    journal.finish(first)
    with pytest.raises(TriageError, match="already finished"):
        journal.begin("INBOX", 1, "5")
    assert journal.count() == 1


def test_other_uidvalidity_is_a_different_key(journal):
    journal.finish(journal.begin("INBOX", 1, "5", message_id="<m@x>"))
    assert journal.handled("INBOX", 2, ["5"]) == set()
    assert journal.by_message_id("<m@x>") is not None


def test_send_rate_records(journal):
    assert not journal.sent_recently("a@b.org", "events", 7)
    journal.record_send("A@b.org", "events")
    assert journal.sent_recently("a@b.org", "events", 7)
    assert not journal.sent_recently("a@b.org", "glossary", 7)
    assert journal.sends_since(10) == 1


def test_sql_is_parameterised(journal):
    hostile = "x'); DROP TABLE messages; --"
    journal.finish(journal.begin("INBOX", 1, "1", subject=hostile, sender=hostile))
    assert journal.get(1).subject == hostile
    assert journal.entries(topic=hostile) == []


def test_unwritable_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open the journal"):
        Journal(blocker / "triage.sqlite3")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ConfigError, match="newer than this triage"):
        Journal(path)
