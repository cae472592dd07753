"""Routing: automatic mail ignored, unsure mail to a human, the table's forwards and parties."""

from pathlib import Path

import pytest

from triage.classifier import Classification
from triage.config import load_settings
from triage.errors import ConfigError
from triage.query import Query
from triage.routing import Router, load_directory, load_table

REPLIES = Path(__file__).resolve().parent.parent / "replies"


def _result(topics, label=None, confidence=0.9):
    label = label or (topics[0] if topics else "other")
    return Classification({label: confidence}, tuple(topics), label, confidence, 0.5, bool(topics))


def _query(address="priya@oakfield.example.sch.uk", automatic=None, text="Can I get help?"):
    return Query("<m@x>", "Priya", address, "subject", text, automatic=automatic)


@pytest.fixture
def router(tmp_path):
    directory = tmp_path / "schools.csv"
    directory.write_text(
        "domain,delivery_partner_name,delivery_partner_email,appropriate_body_name,appropriate_body_email\n"
        "oakfield.example.sch.uk,North Hub,dp@north.example.org,TSH East,ab@east.example.org\n"
    )
    return Router.from_settings(load_settings(_env_file=None, replies_dir=REPLIES, directory_file=directory))


def test_automatic_is_ignored_whatever_the_words(router):
    decision = router.route(_query(automatic="Auto-Submitted: auto-replied"), _result(["events"]))
    assert decision.action == "ignore"
    assert "automatic" in decision.reason


def test_other_and_unsure_go_to_a_human(router):
    assert router.route(_query(), _result([], label="other")).action == "human"
    unsure = router.route(_query(), _result([], label="events", confidence=0.4))
    assert unsure.action == "human"
    assert "unsure: events" in unsure.reason


def test_reply_and_forward_to_the_schools_delivery_partner(router):
    decision = router.route(_query(), _result(["events"]))
    assert decision.action == "reply"
    assert decision.forwards == (("delivery_partner", "dp@north.example.org"),)
    assert decision.school.delivery_partner.name == "North Hub"


def test_unknown_school_forwards_to_the_default_party(router):
    decision = router.route(_query(address="x@elsewhere.example.org"), _result(["induction-length"]))
    assert decision.forwards == (("appropriate_body", "appropriate-bodies@ect.example.org"),)


def test_multi_topic_forwards_once_each(router):
    decision = router.route(_query(), _result(["events", "glossary", "induction-length"]))
    assert decision.topics == ("events", "glossary", "induction-length")
    assert [p for p, _ in decision.forwards] == ["delivery_partner", "appropriate_body"]
    assert decision.safe is False


def test_safe_only_when_every_topic_is_safe(router):
    assert router.route(_query(), _result(["glossary"])).safe is True
    assert router.route(_query(), _result(["glossary", "events"])).safe is False


def test_table_errors_name_the_problem(tmp_path):
    bad = tmp_path / "routing.toml"
    bad.write_text('[topics.evnts]\naction = "reply"\n')
    with pytest.raises(ConfigError, match="unknown topic 'evnts'"):
        load_table(bad)
    bad.write_text('[topics.events]\naction = "forward"\n')
    with pytest.raises(ConfigError, match="needs a party"):
        load_table(bad)
    bad.write_text('[topics.events]\naction = "shout"\n')
    with pytest.raises(ConfigError, match="action 'shout'"):
        load_table(bad)


def test_directory_needs_its_columns(tmp_path):
    bad = tmp_path / "d.csv"
    bad.write_text("domain,dp\nx.org,y\n")
    with pytest.raises(ConfigError, match="missing columns"):
        load_directory(bad)
