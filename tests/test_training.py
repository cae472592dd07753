"""Training data check, training, thresholds and the model file's safety checks."""

import joblib
import numpy as np
import pytest
from conftest import ROOT

from triage import classifier, training
from triage.errors import ModelError, SampleError
from triage.query import from_text
from triage.topics import LABELS, TOPICS

DATA = ROOT / "models" / "data"


def test_committed_training_data_passes_the_check():
    counts = training.check(training.load_data(DATA))
    assert all(counts[t] >= training.MIN_PER_TOPIC for t in TOPICS)
    assert counts["other"] >= training.MIN_OTHER


def _ex(label, text, n=1):
    return training.Example(label, text, f"t.csv:{n}")


def test_check_refuses_bad_data():
    examples = [
        _ex("events", "Who do I tell if I miss the training day?", 2),
        _ex("events", "who do I tell if I miss the training day", 3),  # duplicate after folding
        _ex("evnts", "typo topic", 4),
        _ex("glossary", "Who do I tell if I miss the training day please?", 5),  # near-duplicate
        _ex("other", "", 6),
    ]
    with pytest.raises(SampleError) as info:
        training.check(examples, min_per_topic=1, min_other=0)
    text = str(info.value)
    assert "t.csv:3: duplicate of t.csv:2" in text
    assert "t.csv:4: unknown topic 'evnts'" in text
    assert "t.csv:5: near-duplicate of t.csv:2 with another topic (glossary vs events)" in text
    assert "t.csv:6: empty text" in text
    assert "topic 'funding-eligibility' has 0 examples; at least 1 are needed" in text


def test_check_refuses_thin_topics():
    examples = [_ex(label, f"{label} question number {i}", i) for label in LABELS for i in range(3)]
    with pytest.raises(SampleError, match="has 3 examples; at least 60"):
        training.check(examples)


def test_read_examples_needs_columns(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("label,sentence\nevents,hi\n")
    with pytest.raises(SampleError, match="needs the columns topic,text"):
        training.read_examples(bad)


def test_choose_thresholds_meets_the_target():
    labels = list(LABELS)
    rng = np.random.default_rng(0)
    truth, rows = [], []
    for i in range(400):
        true = labels[i % len(labels)]
        row = rng.dirichlet(np.ones(len(labels)) * 0.3)
        if i % 5:  # four in five are confidently right
            row = row * 0.1
            row[labels.index(true)] += 0.9
        truth.append(true)
        rows.append(row / row.sum())
    _threshold, _margin, precision, coverage = training.choose_thresholds(np.array(rows), labels, truth, target=0.97)
    assert precision >= 0.97
    assert 0.5 < coverage <= 1.0


@pytest.fixture(scope="module")
def trained():
    return training.train(training.load_data(DATA), folds=3)


def test_train_writes_a_model_that_loads_and_classifies(trained, tmp_path):
    model = trained.model
    assert trained.scores.macro_f1 > 0.85
    assert model.card["data_digest"] and model.card["versions"]["scikit-learn"]
    assert 0 < model.threshold < 1
    path = tmp_path / "m.joblib"
    classifier.save(model, path)
    card = training.write_card(model, path)
    assert card.read_text().count('"confidence"') >= 1
    loaded = classifier.load(path)
    result = loaded.classify(from_text("How do I pair my mentors with their ECTs on Steplab?"))
    assert result.topics == ("mentor-matching",)
    assert loaded.classify(from_text("Please find attached our invoice for catering, due in 30 days.")).topics == ()


def test_model_for_other_topics_is_refused(trained, tmp_path):
    path = tmp_path / "m.joblib"
    classifier.save(trained.model, path)
    payload = joblib.load(path)
    payload["labels"] = [*payload["labels"][:-2], "other"]
    joblib.dump(payload, path)
    with pytest.raises(ModelError, match=r"trained for 14 topics, this version has 15; run 'triage train'"):
        classifier.load(path)


def test_model_of_another_sklearn_is_refused(trained, tmp_path):
    path = tmp_path / "m.joblib"
    classifier.save(trained.model, path)
    payload = joblib.load(path)
    payload["sklearn_version"] = "0.24.2"
    joblib.dump(payload, path)
    with pytest.raises(ModelError, match=r"written by scikit-learn 0.24.2, this is .*; run 'triage train'"):
        classifier.load(path)


def test_garbage_model_file_is_refused(tmp_path):
    path = tmp_path / "m.joblib"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="cannot be read"):
        classifier.load(path)


def test_compiled_scorer_matches_the_sklearn_pipeline(monkeypatch):
    examples = training.load_data(DATA)
    texts, labels = [e.text for e in examples], [e.label for e in examples]
    pipeline = training.build_pipeline().fit(texts, labels)
    scorer = training.compile_pipeline(pipeline)
    probe = [*texts[::37], "Step Lab won't show my mentors", "", "NQT induction: how to extend it?"]
    expected = pipeline.predict_proba(probe)
    assert list(scorer.labels) == [str(c) for c in pipeline.classes_]
    monkeypatch.setattr(classifier, "_SPARSE_FROM", 0)  # one batch, one scipy.sparse product
    assert np.allclose(scorer.probabilities_of(probe), expected, atol=1e-9)
    monkeypatch.setattr(classifier, "_SPARSE_FROM", 10**9)  # numpy alone
    one_by_one = np.vstack([scorer.probabilities_of([t]) for t in probe])
    assert np.allclose(one_by_one, expected, atol=1e-9)


def test_scorer_finds_the_features_sklearn_finds():
    """The integer-key features are the vectorizers' own, text by text, in a batch or not."""
    examples = training.load_data(DATA)
    texts = [e.text for e in examples][::5]
    texts += ["", "a b c", "I  a  x", "step\x00lab é a ü", "Step  Lab\n\nMy ECT, NQT's s41"]
    pipeline = training.build_pipeline().fit([e.text for e in examples], [e.label for e in examples])
    scorer = training.compile_pipeline(pipeline)
    union = pipeline.named_steps["features"]
    matrix = union.transform(pipeline.named_steps["prepare"].transform(texts))
    rows, ids = scorer.features(texts)
    for i in range(len(texts)):
        assert sorted(set(ids[rows == i].tolist())) == sorted(matrix[i].indices.tolist()), texts[i]
