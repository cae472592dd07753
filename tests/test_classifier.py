"""Classification: one topic, two topics, "other", and the deciding terms."""

import pytest

from triage import classifier
from triage.classifier import asks, normalise, segments, sentences_of
from triage.query import Query, from_text


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


def test_sentences_split_where_people_end_them():
    text = "I registered her yesterday. How long till she's on step lab? also who do I tell about the event?"
    assert sentences_of(text) == [
        "I registered her yesterday.",
        "How long till she's on step lab?",
        "also who do I tell about the event?",
    ]
    assert sentences_of("e.g. the form. Then more") == ["e.g. the form.", "Then more"]
    # A list of issues in one sentence, separated by semicolons.
    assert len(sentences_of("her name is wrong on the service; she is leaving at Easter; and he needs longer")) == 3


def test_a_short_question_in_a_list_item_joins_its_sentence():
    text = ("Two questions:\n\n1) She can't come to the conference on 19 March. Who do I tell?\n"
            "2) She will be away for six months. How do we arrange that?")
    assert sentences_of(text)[1:] == [
        "1) She can't come to the conference on 19 March. Who do I tell?",
        "2) She will be away for six months. How do we arrange that?",
    ]
    # In prose a short question may ask about the whole email: it stays apart.
    assert sentences_of("She was registered on the DfE side weeks ago.\n\nWhat am I missing?") == [
        "She was registered on the DfE side weeks ago.",
        "What am I missing?",
    ]


def test_nobody_having_received_something_is_a_problem_reported():
    assert asks("Also neither of our two mentors has received a single email from Ambition.")
    assert asks("None of our ECTs have had their login details.")
    assert not asks("Neither of them is new to teaching.")
    assert asks("- She was registered weeks ago, but nothing at all from Ambition has arrived.")
    assert asks("Nothing has come through to either of them.")
    assert not asks("Nothing has changed since then.")


def test_two_list_items_each_with_a_short_question(model):
    text = ("Hi,\n\nOur ECT is expecting and starts maternity leave in March. A couple of questions:\n\n"
            "1) She won't be able to come to the spring ECT conference on 19 March. Who do I need to tell?\n"
            "2) She'll be on leave for around six months and would like her induction extended to make up "
            "for it. How do we arrange that?\n")
    assert set(model.classify(from_text(text)).topics) == {"events", "induction-length"}


def test_a_run_on_sentence_splits_where_it_turns_to_another_matter():
    text = ("i can only see one of our three ECTs on steplab even though they were registered weeks ago, "
            "also do I as induction tutor need to fill in the access form too")
    assert len(sentences_of(text)) == 2
    assert len(sentences_of("We were registered - also the mentors were, and while I'm emailing, thanks")) == 3


def test_a_subject_that_asks_is_a_question_of_its_own(model):
    query = Query(
        message_id="<1@x>", sender_name="", sender_address="a@school.example.org",
        subject="Can I use my My Ambition login for MyECT?",
        text=("Hi, see the subject, I did my NPQ with you last year. Also I am moving to another school "
              "in the summer term, what do I need to do about my ECT training when I transfer schools?"),
    )
    assert set(model.classify(query).topics) == {"myect-login", "transfers"}


def test_context_is_not_a_second_question(model):
    text = ("Hello, I registered both of our ECTs on the DfE portal at the start of September and the lead "
            "provider confirmed them. Neither of them has received a single email from Ambition since; "
            "could your emails be going to junk?")
    assert model.classify(from_text(text)).topics == ("missing-emails",)


def test_a_question_is_also_read_with_the_sentence_before_it(model, monkeypatch):
    text = (
        "Hello,\n\nOne of our ECTs is moving to a school in Leeds at Easter and will carry on her "
        "induction there. What do I need to do on our side?\n\nSeparately, another ECT has been "
        "off sick for most of the autumn term and his induction will have to run longer than a "
        "year. How do we arrange that?"
    )
    sentences = sentences_of(text)
    assert [sentences[i] for i in sorted(classifier._questions_after_context(text, sentences))] == [
        "What do I need to do on our side?",
        "How do we arrange that?",
    ]  # never across a blank line ("Hello," and the first question are apart)
    assert model.classify(from_text(text)).topics == ("transfers", "induction-length")
    # "How do we arrange that?" alone says nothing; it is the window that finds the second topic.
    monkeypatch.setattr(classifier, "_questions_after_context", lambda text, sentences: set())
    assert model.classify(from_text(text)).topics == ("transfers",)
