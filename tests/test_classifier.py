"""Classification: one topic, two topics, "other", and the deciding terms."""

import pytest

from triage.classifier import asks, normalise, segments
from triage.query import from_text


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("I'm new to all this - what do ECF, AB and DP stand for?", "glossary"),
        ("Is our school eligible for funding? We're an independent school, not sure about section 41.", "funding-eligibility"),
        ("Our ECTs haven't had any emails from Ambition, could they be in junk?", "missing-emails"),
        ("Can't make the training event next Tuesday, who should I let know?", "events"),
        ("How do we extend an ECT's induction because she is going part time?", "induction-length"),
        ("Does my ECT lead need to complete the step lab access form too?", "tutor-onboarding"),
    ],
)
def test_single_topics(model, text, topic):
    result = model.classify(from_text(text))
    assert result.topics[:1] == (topic,), result


def test_two_questions_in_one_email(model):
    text = (
        "Hi, two things please. Firstly, none of our mentors have received any emails from Ambition yet - "
        "should our IT team add your addresses to the safe senders list?\n\n"
        "Secondly, one of our ECTs can't make the training session next week because of a school trip. "
        "Who should I tell about missing the event?"
    )
    result = model.classify(from_text(text))
    assert set(result.topics) == {"missing-emails", "events"}
    assert result.topics[0] in ("missing-emails", "events")


@pytest.mark.parametrize(
    "text",
    [
        "Please find attached invoice INV-2291 for the catering at the spring conference.",
        "I want to raise a safeguarding concern about a pupil at my school.",
        "Thank you so much for your help last week!",
    ],
)
def test_other_is_not_answered(model, text):
    result = model.classify(from_text(text))
    assert result.topics == ()
    assert not result.confident


def test_explain_names_deciding_terms(model):
    result = model.classify(from_text("I can't see my mentors on Steplab"), explain=True)
    assert result.terms
    assert any("steplab" in term or "see" in term for term in result.terms)


def test_normalise_folds_variants():
    assert normalise("Step Lab and StepLab, My ECT and the DfE portal") == "steplab and steplab, myect and the dfeservice"


def test_segments_and_asks():
    parts = segments("I am the induction tutor at a big school in Leeds. How do I match mentors to ECTs?")
    assert len(parts) == 2
    assert asks(parts[1]) and not asks(parts[0])
    assert asks("Our finance team are asking me how the funding is paid.")
