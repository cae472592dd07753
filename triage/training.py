"""Training: labelled texts -> a checked data set -> a Model with thresholds and a card.

The data are ``models/data/paraphrases.csv`` (written for training) and, when present,
``models/data/corrections.csv`` (harvested from staff corrections by ``triage learn``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import platform
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from joblib import Parallel, delayed
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits

from triage import classifier
from triage.classifier import CHAR_N, TOKEN_PATTERN, Model, Scorer, prepare_all
from triage.errors import SampleError
from triage.evaluation import Scores, score_labels
from triage.topics import LABELS, OTHER

log = logging.getLogger(__name__)

PARAPHRASES = "paraphrases.csv"
FILLERS = "fillers.toml"
# Each training text gets this many copies wrapped in realistic openings, context and closings.
AUGMENT_COPIES = 1
CORRECTIONS = "corrections.csv"
# The data check: fewer examples than this for a topic (or for "other") is refused.
MIN_PER_TOPIC = 60
MIN_OTHER = 200
# Two texts of different labels this similar (cosine of word counts) are near-duplicates.
NEAR_DUPLICATE = 0.9
# Reply precision the thresholds must reach on held-out folds: the product's target. A third of
# the training texts are `other`, most of them near-misses written to look like a topic, so the
# folds are harder than real mail (at these thresholds the samples score 0.986 where the folds
# score 0.97).
TARGET_PRECISION = 0.97
FOLDS = 5
# Cross-validation folds fitted at once (the machines have 2 cores).
JOBS = 2
# The grid the thresholds are chosen from.
_THRESHOLDS = np.round(np.arange(0.20, 0.951, 0.025), 3)
_MARGINS = np.round(np.arange(0.0, 0.501, 0.05), 3)


def build_pipeline(*, c: float = 10.0, seed: int = classifier.SEED) -> Pipeline:
    """The untrained pipeline: word 1-2-grams and character 4-grams, TF-IDF, logistic regression.

    Character 4-grams within words scored as well as 3-5-grams on our held-out mail, at 1.5 times
    the speed. ``compile`` turns the fitted pipeline into the ``Scorer`` that classifies.
    """
    words = Pipeline(
        [
            (
                "counts",
                CountVectorizer(lowercase=False, ngram_range=(1, 2), token_pattern=TOKEN_PATTERN),
            ),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
        ]
    )
    chars = Pipeline(
        [
            (
                "counts",
                CountVectorizer(
                    lowercase=False,
                    analyzer="char_wb",
                    ngram_range=(CHAR_N, CHAR_N),
                    min_df=2,
                    max_features=60000,
                ),
            ),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
        ]
    )
    return Pipeline(
        [
            ("prepare", FunctionTransformer(prepare_all)),
            ("features", FeatureUnion([("words", words), ("chars", chars)])),
            (
                "clf",
                LogisticRegression(
                    C=c, max_iter=2000, tol=1e-3, class_weight="balanced", random_state=seed
                ),
            ),
        ]
    )


def compile_pipeline(pipeline: Pipeline) -> Scorer:
    """The fitted pipeline as plain data (vocabularies, IDF, coefficients)."""
    union: FeatureUnion = pipeline.named_steps["features"]
    branches = dict(union.transformer_list)
    words, chars = branches["words"], branches["chars"]
    clf: LogisticRegression = pipeline.named_steps["clf"]
    return Scorer(
        labels=tuple(str(c) for c in clf.classes_),
        word_vocab={str(k): int(v) for k, v in words.named_steps["counts"].vocabulary_.items()},
        word_idf=np.asarray(words.named_steps["tfidf"].idf_, dtype=float),
        char_vocab={str(k): int(v) for k, v in chars.named_steps["counts"].vocabulary_.items()},
        char_idf=np.asarray(chars.named_steps["tfidf"].idf_, dtype=float),
        coef=np.asarray(clf.coef_, dtype=float),
        intercept=np.asarray(clf.intercept_, dtype=float),
    )


@dataclass(frozen=True)
class Example:
    label: str
    text: str
    source: str  # file:line


def read_examples(path: Path) -> list[Example]:
    """A CSV with columns ``topic`` and ``text``; anything else is a SampleError."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"topic", "text"} <= set(reader.fieldnames):
                raise SampleError(f"{path}: needs the columns topic,text (has {reader.fieldnames})")
            return [
                Example(
                    (row["topic"] or "").strip(), (row["text"] or "").strip(), f"{path.name}:{n}"
                )
                for n, row in enumerate(reader, start=2)
            ]
    except FileNotFoundError as exc:
        raise SampleError(f"{path}: no training data; check TRIAGE_TRAINING_DIR") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SampleError(f"{path}: not a UTF-8 CSV file ({exc})") from exc


def load_data(directory: Path) -> list[Example]:
    """The paraphrases and, when present, the staff corrections."""
    examples = read_examples(directory / PARAPHRASES)
    corrections = directory / CORRECTIONS
    if corrections.is_file():
        examples += read_examples(corrections)
    return examples


def _key(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())


def check(
    examples: Sequence[Example], *, min_per_topic: int = MIN_PER_TOPIC, min_other: int = MIN_OTHER
) -> Counter[str]:
    """Refuse unknown labels, empty texts, duplicates, cross-label near-duplicates, thin topics."""
    problems: list[str] = []
    seen: dict[str, Example] = {}
    for ex in examples:
        if ex.label not in LABELS:
            problems.append(
                f"{ex.source}: unknown topic {ex.label!r}; known topics are in triage/topics.py"
            )
        if not ex.text:
            problems.append(f"{ex.source}: empty text")
            continue
        key = _key(ex.text)
        if key in seen:
            problems.append(f"{ex.source}: duplicate of {seen[key].source}")
        else:
            seen[key] = ex
    usable = [ex for ex in seen.values() if ex.label in LABELS]
    if len(usable) > 1:
        vectors = TfidfVectorizer(use_idf=False, norm="l2").fit_transform(ex.text for ex in usable)
        similar = (vectors @ vectors.T).tocoo()
        for i, j, value in zip(similar.row, similar.col, similar.data, strict=True):
            if i < j and value >= NEAR_DUPLICATE and usable[i].label != usable[j].label:
                problems.append(
                    f"{usable[j].source}: near-duplicate of {usable[i].source} "
                    f"with another topic ({usable[j].label} vs {usable[i].label})"
                )
    counts = Counter(ex.label for ex in examples)
    for label in LABELS:
        need = min_other if label == OTHER else min_per_topic
        if counts[label] < need:
            problems.append(
                f"topic {label!r} has {counts[label]} examples; at least {need} are needed"
            )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SampleError(
            f"training data check failed ({len(problems)} problems):\n  {shown}{more}"
        )
    return counts


@dataclass(frozen=True)
class Fillers:
    openings: tuple[str, ...]
    context: tuple[str, ...]
    closings: tuple[str, ...]


def load_fillers(directory: Path) -> Fillers | None:
    """The topic-neutral wrapping of ``fillers.toml``, or None when the file is absent."""
    import tomllib

    path = directory / FILLERS
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Fillers(tuple(data["openings"]), tuple(data["context"]), tuple(data["closings"]))
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise SampleError(f"{path}: needs lists openings, context and closings ({exc})") from exc


def augment(
    examples: Sequence[Example], fillers: Fillers, *, seed: int, copies: int = AUGMENT_COPIES
) -> list[Example]:
    """Copies of the examples set inside an email: an opening, one or two context sentences,
    the text, and often a closing, the way real support mail arrives."""
    rng = np.random.default_rng(seed)
    out = []
    for ex in examples:
        for n in range(copies):
            opening = fillers.openings[rng.integers(len(fillers.openings))]
            picked = rng.choice(len(fillers.context), size=int(rng.integers(1, 3)), replace=False)
            context = " ".join(fillers.context[i] for i in picked)
            closing = (
                fillers.closings[rng.integers(len(fillers.closings))] if rng.random() < 0.6 else ""
            )
            body = "\n\n".join(part for part in (opening, context, ex.text, closing) if part)
            out.append(Example(ex.label, body, f"{ex.source}+{n + 1}"))
    return out


def digest(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.label}\t{ex.text}\n".encode())
    return h.hexdigest()[:16]


def _replied(
    probs: np.ndarray, labels: list[str], threshold: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(probs, axis=1)
    top = order[:, -1]
    best = probs[np.arange(len(probs)), top]
    second = probs[np.arange(len(probs)), order[:, -2]]
    other = labels.index(OTHER)
    return top, (top != other) & (best >= threshold) & (best - second >= margin)


def choose_thresholds(
    probs: np.ndarray, labels: list[str], truth: Sequence[str], *, target: float = TARGET_PRECISION
) -> tuple[float, float, float, float]:
    """The (threshold, margin) with the most coverage at reply precision >= target."""
    truth_idx = np.array([labels.index(t) for t in truth])
    in_scope = truth_idx != labels.index(OTHER)
    best: tuple[float, float, float, float] | None = None
    for threshold in _THRESHOLDS:
        for margin in _MARGINS:
            top, replied = _replied(probs, labels, float(threshold), float(margin))
            if not replied.any():
                continue
            precision = float((top[replied] == truth_idx[replied]).mean())
            coverage = float((replied & in_scope).sum() / max(1, in_scope.sum()))
            if precision >= target and (best is None or coverage > best[3]):
                best = (float(threshold), float(margin), precision, coverage)
    if best is None:  # nothing reaches the target: answer nothing on our own
        return 0.99, 0.5, 0.0, 0.0
    return best


def _fit(texts: list[str], labels: list[str]) -> Pipeline:
    """The pipeline fitted on these texts (in a worker process, on one BLAS thread: faster than
    two processes' threads fighting over two cores)."""
    with threadpool_limits(1):
        pipe = build_pipeline()
        pipe.fit(texts, labels)
        return pipe


def _fold(
    train_texts: list[str], train_labels: list[str], test_texts: list[str]
) -> tuple[list[str], np.ndarray]:
    """Fit on one fold and predict the held-out part (runs in a worker process)."""
    pipe = _fit(train_texts, train_labels)
    with threadpool_limits(1):
        return [str(c) for c in pipe.classes_], np.asarray(pipe.predict_proba(test_texts))


@dataclass
class TrainResult:
    model: Model
    scores: Scores
    counts: Counter[str]
    seconds: float


def train(
    examples: Sequence[Example],
    *,
    seed: int = classifier.SEED,
    folds: int = FOLDS,
    min_per_topic: int = MIN_PER_TOPIC,
    min_other: int = MIN_OTHER,
    fillers: Fillers | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Check the data, cross-validate, choose thresholds, and fit the final model on everything.

    With ``fillers``, every text also trains (and is tested) wrapped as an email; a text and
    its wrapped copies always fall in the same fold.
    """
    started = datetime.now(UTC)
    counts = check(examples, min_per_topic=min_per_topic, min_other=min_other)
    wrapped = augment(examples, fillers, seed=seed) if fillers else []
    copies = len(wrapped) // len(examples) if wrapped else 0
    every = [*examples, *wrapped]
    texts = [ex.text for ex in every]
    truth = [ex.label for ex in every]
    labels = list(LABELS)
    probs = np.zeros((len(texts), len(labels)))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    originals = [ex.label for ex in examples]

    def _with_copies(idx: np.ndarray) -> list[int]:
        n = len(examples)
        return [*idx.tolist(), *(n + i * copies + c for i in idx.tolist() for c in range(copies))]

    splits = [
        (_with_copies(tr), _with_copies(te)) for tr, te in splitter.split(originals, originals)
    ]
    progress(
        f"cross-validation: {folds} folds and the final model on all {len(texts)} texts, "
        f"{JOBS} at a time"
    )
    # The final model (the longest job) goes first, so that no core idles while the last fold
    # runs alone.
    final, *fitted = Parallel(n_jobs=JOBS, prefer="processes")(
        [
            delayed(_fit)(texts, truth),
            *(
                delayed(_fold)(
                    [texts[i] for i in tr], [truth[i] for i in tr], [texts[i] for i in te]
                )
                for tr, te in splits
            ),
        ]
    )
    for (_, test_idx), (classes, fold_probs) in zip(splits, fitted, strict=True):
        columns = [labels.index(c) for c in classes]
        probs[np.ix_(test_idx, columns)] = fold_probs
    threshold, margin, precision, coverage = choose_thresholds(probs, labels, truth)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    per, macro, confusions = score_labels(truth, predicted)
    _, replied = _replied(probs, labels, threshold, margin)
    scores = Scores(per, macro, confusions, precision, coverage, int(replied.sum()))
    pipe: Pipeline = final
    seconds = (datetime.now(UTC) - started).total_seconds()
    card: dict[str, Any] = {
        "trained_at": started.isoformat(timespec="seconds"),
        "data_digest": digest(examples),
        "examples": dict(counts),
        "wrapped_copies": copies,
        "sources": sorted({ex.source.split(":")[0] for ex in examples}),
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "cross_validation": {
            "folds": folds,
            "seed": seed,
            "macro_f1": round(macro, 4),
            "per_topic": {
                k: [round(v[0], 4), round(v[1], 4), round(v[2], 4), v[3]] for k, v in per.items()
            },
            "reply_precision": round(precision, 4),
            "coverage": round(coverage, 4),
        },
        "thresholds": {"confidence": threshold, "margin": margin},
        "train_seconds": round(seconds, 1),
    }
    model = Model(compile_pipeline(pipe), threshold=threshold, margin=margin, card=card)
    return TrainResult(model, scores, counts, seconds)


def write_card(model: Model, path: Path) -> Path:
    """The model card beside the model file, as JSON people can read."""
    import json

    card_path = path.with_suffix(".card.json")
    card = dict(model.card)
    card["thresholds"] = {
        "confidence": model.threshold,
        "margin": model.margin,
        "segment": model.segment_threshold,
    }
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return card_path


__all__ = [
    "CORRECTIONS",
    "PARAPHRASES",
    "Example",
    "Fillers",
    "TrainResult",
    "augment",
    "build_pipeline",
    "check",
    "choose_thresholds",
    "compile_pipeline",
    "digest",
    "load_data",
    "load_fillers",
    "read_examples",
    "train",
    "write_card",
]
