"""Classification: Query -> Classification(scores, topics); train, save and load the model.

One scikit-learn Pipeline: TF-IDF over word 1-2-grams and character 3-5-grams, then a logistic
regression (its probabilities are what the thresholds are chosen on). "other" is both a class
and a decision rule: below the confidence threshold, or too close to the runner-up, a human
decides. A second question in the same email is found by scoring its sentences as well.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from triage.errors import ModelError
from triage.query import Query
from triage.topics import LABELS, OTHER, TOPICS

# Fixed seed: the same data gives the same model.
SEED = 20261128
# Model file format; bump when the saved dict changes shape.
FORMAT = 1
# Defaults until `triage train` has chosen thresholds on held-out data.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MARGIN = 0.15
# A sentence or paragraph must be at least this sure to add a second topic to an email.
DEFAULT_SEGMENT_THRESHOLD = 0.6
# Segments shorter than this many characters carry too little to score on their own.
_MIN_SEGMENT_CHARS = 25
# Spellings people use for the same thing, folded to one token before vectorising
# (vocabulary only, not facts: "step lab" and "StepLab" are one product name).
_VARIANTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement)
    for pattern, replacement in (
        (r"\bstep\s*-?\s*lab\b", "steplab"),
        (r"\bmy\s*-?\s*ect\b", "myect"),
        (r"\bmy\s+ambition\b", "myambition"),
        (r"\bmy\s+teacher\s+training\b", "myteachertraining"),
        (r"\bmanage[- ]training(?: for early career teachers)?(?: service)?\b", "dfeservice"),
        (r"\bdfe(?:'s)?\s+(?:portal|service|website|site|system)\b", "dfeservice"),
        (r"\bappropriate\s+bod(?:y|ies)\b", "appropriatebody"),
        (r"\bdelivery\s+partners?\b", "deliverypartner"),
        (r"\binduction\s+tutors?\b", "inductiontutor"),
        (r"\bsection\s*41\b|\bs\.?\s?41\b", "section41"),
        (r"\bget information about schools\b", "gias"),
        (r"\bnqts?\b", "ect"),
        (r"\be-?mails?\b", "email"),
    )
)
# A sentence that asks or requests something (only such sentences add a topic to an email):
# a question mark, or an opening that asks, requests or reports a problem.
_ASKS = re.compile(
    r"\?|^\W*(and |also,? |secondly,? |finally,? |separately,? |but )?"
    r"(how|what|who|where|when|why|which|can|could|do|does|did|is|are|should|would|will|may|"
    r"please|i need|we need|i'd like|we'd like|i would like|i am wondering|i'm wondering|"
    r"wondering|not sure|i can't|we can't|i cannot|i'm unable|we're unable|i am unable|"
    r"none of|i haven't|we haven't|they haven't|i won't|i will not|i'm not able|i am not able)\b",
    re.IGNORECASE,
)
# An indirect question anywhere in a sentence: "they are asking me how ...", "I'd like to know if".
_ASKS_INDIRECT = re.compile(
    r"\b(ask(ing|ed)?|know|wonder(ing|ed)?|clarify|confirm|explain|tell (me|us)|advise|"
    r"unsure|not sure|unclear)\b.{0,40}?\b(how|what|who|where|when|why|which|whether|if)\b",
    re.IGNORECASE,
)
# An asking sentence this sure it is about none of the FAQ topics makes the email a human's,
# unless some asking sentence supports the whole email's topic.
_OTHER_SEGMENT = 0.75
# A sentence this sure of a topic counts as asking it even without asking words.
_SURE_SEGMENT = 0.9
# When the whole email is unsure (two questions split its probability), asking sentences this
# sure of the whole email's top topic let it be answered after all.
_FALLBACK_SEGMENT = 0.8
_FALLBACK_WHOLE = 0.3
_SENTENCE_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9\"'(])|\n\s*\n|\n(?=\s*[-*\u2022\d]+[.)]?\s)")


def normalise(text: str) -> str:
    """Fold spelling variants and whitespace, the same way in training and classifying."""
    for pattern, replacement in _VARIANTS:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def prepare(text: str) -> str:
    """The vectorisers' preprocessor (a module function, so the pipeline can be pickled)."""
    return normalise(text).lower()


def asks(sentence: str) -> bool:
    """Whether a sentence asks or requests something (see ``_ASKS``)."""
    return bool(_ASKS.search(sentence) or _ASKS_INDIRECT.search(sentence))


def segments(text: str) -> list[str]:
    """Sentences and short paragraphs worth scoring on their own, in the order written."""
    parts = [p.strip() for p in _SENTENCE_SPLIT.split(text) if p and p.strip()]
    return [p for p in parts if len(p) >= _MIN_SEGMENT_CHARS]


@dataclass(frozen=True)
class Classification:
    """The model's view of one message: every label's probability and the topics asked."""

    scores: dict[str, float]  # every label, whole message
    topics: tuple[str, ...]  # topics asked, main first, then in the order written; () if unsure
    label: str  # the top label of the whole message (may be "other")
    confidence: float  # probability of the top label
    margin: float  # top probability minus the runner-up's
    confident: bool  # above both thresholds and not "other": safe to answer
    terms: tuple[str, ...] = field(default=())  # deciding terms, when asked for

    @property
    def topic(self) -> str:
        """The main topic, or "other" when there is none to answer."""
        return self.topics[0] if self.topics else OTHER


def build_pipeline(*, c: float = 10.0) -> Pipeline:
    """The untrained pipeline; word and character features, a multinomial logistic regression."""
    features = FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(
                    preprocessor=prepare,
                    ngram_range=(1, 2),
                    sublinear_tf=True,
                    min_df=1,
                    token_pattern=r"(?u)\b\w[\w'-]*\b",
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    preprocessor=prepare,
                    analyzer="char_wb",
                    ngram_range=(3, 5),
                    sublinear_tf=True,
                    min_df=2,
                    max_features=60000,
                ),
            ),
        ]
    )
    classifier = LogisticRegression(
        C=c, max_iter=2000, tol=1e-3, class_weight="balanced", random_state=SEED
    )
    return Pipeline([("features", features), ("clf", classifier)])


@dataclass
class Model:
    """A trained pipeline with its thresholds and card; built by ``train`` or ``load``."""

    pipeline: Pipeline
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    segment_threshold: float = DEFAULT_SEGMENT_THRESHOLD
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.pipeline.classes_]

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(list(texts)))

    def classify(self, query: Query, *, explain: bool = False) -> Classification:
        """Classify one message; see ``classify_many`` for batches."""
        return self.classify_many([query], explain=explain)[0]

    def classify_many(
        self, queries: Sequence[Query], *, explain: bool = False
    ) -> list[Classification]:
        """Classify messages in one batch: the whole text and each of its sentences."""
        texts = [model_text(q) for q in queries]
        pieces: list[list[str]] = [segments(q.text) if len(q.text) > 80 else [] for q in queries]
        asking = [[asks(s) for s in p] for p in pieces]
        flat = [*texts, *(s for p in pieces for s in p)]
        probs = self.probabilities(flat) if flat else np.zeros((0, len(self.labels)))
        labels = self.labels
        results = []
        offset = len(texts)
        for i, query in enumerate(queries):
            whole = probs[i]
            parts = probs[offset : offset + len(pieces[i])]
            offset += len(pieces[i])
            results.append(
                self._decide(labels, whole, parts, asking[i], query if explain else None)
            )
        return results

    def _decide(
        self,
        labels: list[str],
        whole: np.ndarray,
        parts: np.ndarray,
        asking: list[bool],
        explain_for: Query | None,
    ) -> Classification:
        order = np.argsort(whole)[::-1]
        top, second = int(order[0]), int(order[1])
        label = labels[top]
        confidence = float(whole[top])
        margin = confidence - float(whole[second])
        # Topics the sentences ask about, in the order written: a sentence counts when it
        # asks something and is sure enough of one topic, or is very sure of it.
        first_seen: dict[str, int] = {}
        best_seen: dict[str, float] = {}
        asks_other = False
        for position, row in enumerate(parts):
            best = int(np.argmax(row))
            name, value = labels[best], float(row[best])
            if name == OTHER:
                asks_other = asks_other or (asking[position] and value >= _OTHER_SEGMENT)
                continue
            if value < self.segment_threshold:
                continue
            if not asking[position] and value < _SURE_SEGMENT:
                continue
            first_seen.setdefault(name, position)
            best_seen[name] = max(best_seen.get(name, 0.0), value)
        confident = label != OTHER and confidence >= self.threshold and margin >= self.margin
        if (
            not confident
            and label != OTHER
            and confidence >= _FALLBACK_WHOLE
            and best_seen.get(label, 0.0) >= _FALLBACK_SEGMENT
            and sum(1 for v in best_seen.values() if v >= _FALLBACK_SEGMENT) >= 2
        ):
            confident = True  # two questions split the whole; its sentences are clear
        if confident and asks_other and label not in first_seen:
            confident = False  # what it asks is not the FAQ's question, whatever its words
        topics: list[str] = []
        if confident:
            topics = [label]
            topics.extend(t for t in sorted(first_seen, key=first_seen.__getitem__) if t != label)
        terms = self.explain(model_text(explain_for), label) if explain_for is not None else ()
        return Classification(
            scores={labels[j]: float(whole[j]) for j in range(len(labels))},
            topics=tuple(topics),
            label=label,
            confidence=confidence,
            margin=margin,
            confident=confident,
            terms=terms,
        )

    def explain(self, text: str, label: str, *, count: int = 8) -> tuple[str, ...]:
        """The word features that pushed ``text`` towards ``label`` the most."""
        union: FeatureUnion = self.pipeline.named_steps["features"]
        words: TfidfVectorizer = union.transformer_list[0][1]
        vector = words.transform([text])
        clf: LogisticRegression = self.pipeline.named_steps["clf"]
        row = self.labels.index(label)
        weights = clf.coef_[row][: vector.shape[1]]
        contributions = vector.multiply(weights).tocsr()
        names = words.get_feature_names_out()
        pairs = sorted(
            zip(contributions.indices, contributions.data, strict=True), key=lambda p: -p[1]
        )
        return tuple(str(names[j]) for j, value in pairs[:count] if value > 0)


def model_text(query: Query) -> str:
    """What the model reads: the new text, and the subject unless it is a thread reply's."""
    if query.subject and not query.is_reply and not query.forwarded:
        return f"{query.subject}\n{query.text}"
    return query.text


def save(model: Model, path: Path) -> None:
    """Write the model and its card with joblib (a pickle: load only files ``train`` wrote)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "pipeline": model.pipeline,
        "labels": list(LABELS),
        "sklearn_version": sklearn.__version__,
        "threshold": model.threshold,
        "margin": model.margin,
        "segment_threshold": model.segment_threshold,
        "card": model.card,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    joblib.dump(payload, tmp, compress=3)
    tmp.replace(path)


def load(path: Path) -> Model:
    """Load a model ``triage train`` wrote; anything else is a ModelError saying what to do."""
    if not path.is_file():
        raise ModelError(f"{path}: no model file; run 'triage train' (or set TRIAGE_MODEL_PATH)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            payload = joblib.load(path)
    except InconsistentVersionWarning as exc:
        raise ModelError(
            f"{path}: written by scikit-learn {exc.original_sklearn_version}, this is "
            f"{sklearn.__version__}; run 'triage train'"
        ) from exc
    except Exception as exc:  # a pickle can fail in many ways; none is recoverable here
        raise ModelError(f"{path}: cannot be read ({exc}); run 'triage train'") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a triage model of this version; run 'triage train'")
    if payload["sklearn_version"] != sklearn.__version__:
        raise ModelError(
            f"{path}: written by scikit-learn {payload['sklearn_version']}, this is "
            f"{sklearn.__version__}; run 'triage train'"
        )
    saved = list(payload["labels"])
    if saved != list(LABELS):
        raise ModelError(
            f"{path}: trained for {len(saved) - 1} topics, this version has {len(TOPICS)}; "
            "run 'triage train'"
        )
    return Model(
        pipeline=payload["pipeline"],
        threshold=float(payload["threshold"]),
        margin=float(payload["margin"]),
        segment_threshold=float(payload["segment_threshold"]),
        card=dict(payload.get("card", {})),
    )


__all__ = [
    "Classification",
    "Model",
    "asks",
    "build_pipeline",
    "load",
    "model_text",
    "normalise",
    "prepare",
    "save",
    "segments",
]
