"""Classification: Query -> Classification(scores, topics); save and load the model.

The model is trained as a scikit-learn Pipeline (``training.build_pipeline``: TF-IDF over word
1-2-grams and character 4-grams, then a logistic regression) and saved *compiled*: its
vocabularies, IDF weights and coefficients as plain arrays. Classifying then needs neither
scikit-learn nor a pickle of its objects, which makes a cold ``triage classify`` fast and the
model file independent of scikit-learn's internals. "other" is both a class and a decision rule:
below the confidence threshold, or too close to the runner-up, a human decides. A second
question in the same email is found by scoring its sentences as well.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from triage.errors import ModelError
from triage.query import Query
from triage.topics import LABELS, OTHER, TOPICS

# Fixed seed: the same data gives the same model.
SEED = 20261128
# Up to this many texts are scored one by one; more go through one sparse matrix product
# (faster for batches, but importing scipy.sparse costs a third of a second at start).
_SMALL_BATCH = 24
# Model file format; bump when the saved dict changes shape.
FORMAT = 2
# The token pattern of the word features (training.build_pipeline uses the same).
TOKEN_PATTERN = r"(?u)\b\w[\w'-]*\b"
# Character n-gram length of the character features, within words (sklearn's "char_wb").
CHAR_N = 4
# Defaults until `triage train` has chosen thresholds on held-out data.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MARGIN = 0.15
# A sentence or paragraph must be at least this sure to add a second topic to an email.
DEFAULT_SEGMENT_THRESHOLD = 0.6
# Segments shorter than this many characters carry too little to score on their own.
_MIN_SEGMENT_CHARS = 25
# Spellings people use for the same thing, folded to one token before vectorising
# (vocabulary only, not facts: "step lab" and "StepLab" are one product name).
_VARIANT_LIST: tuple[tuple[str, str], ...] = (
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
# All variants in one pattern, one group each (the patterns capture nothing themselves), so
# the text is scanned once instead of thirteen times.
# The lookahead on the first letters of all the variants lets the scan skip most positions at
# once (six times faster).
_VARIANTS = re.compile(
    r"\b(?=[smdaigne])(?:" + "|".join(f"({p})" for p, _ in _VARIANT_LIST) + ")", re.IGNORECASE
)


def _variant(match: re.Match[str]) -> str:
    return _VARIANT_LIST[(match.lastindex or 1) - 1][1]


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
# A problem reported anywhere in a sentence asks for help as much as a question does.
_REPORTS = re.compile(
    r"\b(can't|cannot|can not|won't be able|unable|isn't showing|aren't showing|not showing|"
    r"not appearing|isn't appearing|aren't appearing|haven't (?:had|received|got)|"
    r"hasn't (?:had|received|got)|still (?:isn't|aren't|hasn't|haven't|can't|doesn't|don't))\b",
    re.IGNORECASE,
)
# An indirect question anywhere in a sentence: "they are asking me how ...", "I'd like to know if".
_ASKS_INDIRECT = re.compile(
    r"\b(ask(ing|ed)?|know|wonder(ing|ed)?|clarify|confirm|explain|tell (me|us)|advise|"
    r"unsure|not sure|unclear)\b.{0,40}?\b(how|what|who|where|when|why|which|whether|if)\b",
    re.IGNORECASE,
)
# A sentence this sure of a topic counts as asking it even without asking words.
_SURE_SEGMENT = 0.85
# When the whole email is unsure (two questions split its probability), asking sentences this
# sure of the whole email's top topic let it be answered after all.
_FALLBACK_SEGMENT = 0.8
_FALLBACK_WHOLE = 0.3
_SENTENCE_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9\"'(])|\n\s*\n|\n(?=\s*[-*\u2022\d]+[.)]?\s)")


def normalise(text: str) -> str:
    """Fold spelling variants and whitespace, the same way in training and classifying."""
    return " ".join(_VARIANTS.sub(_variant, text).split())


def prepare(text: str) -> str:
    """What the features are made from: variants folded, lower case (training and classifying)."""
    return normalise(text).lower()


def asks(sentence: str) -> bool:
    """Whether a sentence asks or requests something (see ``_ASKS``)."""
    return bool(
        _ASKS.search(sentence) or _ASKS_INDIRECT.search(sentence) or _REPORTS.search(sentence)
    )


def sentences_of(text: str) -> list[str]:
    """Every sentence and short paragraph of a text, in the order written."""
    return [p.strip() for p in _SENTENCE_SPLIT.split(text) if p and p.strip()]


def segments(text: str) -> list[str]:
    """Sentences and short paragraphs worth scoring on their own, in the order written."""
    return [p for p in sentences_of(text) if len(p) >= _MIN_SEGMENT_CHARS]


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


def prepare_all(texts: Sequence[str]) -> list[str]:
    """``prepare`` over a batch: the training pipeline's first step."""
    return [prepare(t) for t in texts]


_TOKENS = re.compile(TOKEN_PATTERN)


def word_features(prepared: str) -> list[str]:
    """Word 1- and 2-grams, exactly as scikit-learn's CountVectorizer makes them."""
    tokens = _TOKENS.findall(prepared)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def char_features(prepared: str) -> list[str]:
    """Candidate character n-grams: every one scikit-learn's "char_wb" makes, plus some that
    span two words, which no vocabulary can hold (they have a space inside) and so are ignored.

    One pass over the single-spaced text (``prepare`` folds whitespace) instead of one per word;
    a one-letter word's only gram (" a ") is shorter than the n-gram and is added by hand.
    """
    padded = f" {prepared} "
    grams = [padded[i : i + CHAR_N] for i in range(len(padded) - CHAR_N + 1)]
    grams.extend(f" {word} " for word in prepared.split() if len(word) + 2 < CHAR_N)
    return grams


@dataclass(frozen=True)
class Scorer:
    """A trained linear model as plain data: vocabularies, IDF weights, coefficients."""

    labels: tuple[str, ...]
    word_vocab: dict[str, int]
    word_idf: np.ndarray
    char_vocab: dict[str, int]
    char_idf: np.ndarray
    coef: np.ndarray  # labels x (words + chars)
    intercept: np.ndarray

    def count(self, prepared: str) -> tuple[list[int], list[int]]:
        """The known features of one prepared text, as ids with repeats: (words, chars)."""
        words = [i for i in map(self.word_vocab.get, word_features(prepared)) if i is not None]
        chars = [i for i in map(self.char_vocab.get, char_features(prepared)) if i is not None]
        return words, chars

    def _branch(
        self, found: list[int], idf: np.ndarray, offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if not found:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        ids, tf = np.unique(np.asarray(found, dtype=np.intp), return_counts=True)
        weights = (1.0 + np.log(tf)) * idf[ids]  # sublinear tf, idf
        weights /= math.sqrt(float(weights @ weights))  # l2, per branch as sklearn does
        return ids + offset, weights

    def vector(self, counts: tuple[list[int], list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The TF-IDF vector of some counts, as (feature ids, weights)."""
        w_ids, w_val = self._branch(counts[0], self.word_idf, 0)
        c_ids, c_val = self._branch(counts[1], self.char_idf, len(self.word_vocab))
        return np.concatenate([w_ids, c_ids]), np.concatenate([w_val, c_val])

    @staticmethod
    def _tfidf(found: Sequence[list[int]], idf: np.ndarray) -> Any:
        """Rows of TF-IDF weights (sublinear tf, idf, l2 per row) for lists of feature ids, as a
        scipy.sparse CSR matrix (imported here: a single message does without it)."""
        from scipy import sparse

        lengths = np.fromiter(map(len, found), dtype=np.intp, count=len(found))
        columns = np.fromiter(
            itertools.chain.from_iterable(found), dtype=np.intp, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(len(found)), lengths)
        matrix = sparse.csr_matrix(  # duplicates are summed: the counts
            (np.ones(len(columns)), (rows, columns)), shape=(len(found), len(idf))
        )
        matrix.data = (1.0 + np.log(matrix.data)) * idf[matrix.indices]
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sparse.csr_matrix(sparse.diags(1.0 / norms) @ matrix)

    def probabilities(self, rows: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
        """Multinomial logistic regression probabilities, one row per counts (one batch of
        sparse matrix products, not a loop in Python)."""
        if len(rows) <= _SMALL_BATCH:
            scores = np.empty((len(rows), len(self.labels)))
            for i, counts in enumerate(rows):
                ids, weights = self.vector(counts)
                scores[i] = self.coef[:, ids] @ weights + self.intercept
        else:
            split = len(self.word_vocab)
            words = self._tfidf([r[0] for r in rows], self.word_idf)
            chars = self._tfidf([r[1] for r in rows], self.char_idf)
            scores = (
                np.asarray(words @ self.coef[:, :split].T + chars @ self.coef[:, split:].T)
                + self.intercept
            )
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores


@dataclass
class Model:
    """A compiled model with its thresholds and card; built by ``training.train`` or ``load``."""

    scorer: Scorer
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    segment_threshold: float = DEFAULT_SEGMENT_THRESHOLD
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.scorer.labels)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities of each label for whole texts."""
        return self.scorer.probabilities([self.scorer.count(prepare(t)) for t in texts])

    def classify(self, query: Query, *, explain: bool = False) -> Classification:
        """Classify one message; see ``classify_many`` for batches."""
        return self.classify_many([query], explain=explain)[0]

    def classify_many(
        self, queries: Sequence[Query], *, explain: bool = False
    ) -> list[Classification]:
        """Classify messages in one batch: the whole text and each of its sentences.

        Each sentence is counted once; the whole email's counts are the sum of its sentences'.
        """
        labels = self.labels
        if not queries:
            return []
        pieces: list[str] = []  # every sentence of every email (and its subject, if read)
        owner: list[int] = []
        scored: list[int] = []  # the pieces scored on their own
        asking: list[list[bool]] = []
        for i, query in enumerate(queries):
            subject = model_subject(query)
            if subject:
                pieces.append(subject)
                owner.append(i)
            sentences = sentences_of(query.text)
            long_enough = len(query.text) > 80
            asked = []
            for sentence in sentences:
                if long_enough and len(sentence) >= _MIN_SEGMENT_CHARS:
                    scored.append(len(pieces))
                    asked.append(asks(sentence))
                pieces.append(sentence)
                owner.append(i)
            asking.append(asked)
        counted = [self.scorer.count(prepare(piece)) for piece in pieces]
        wholes: list[tuple[list[int], list[int]]] = [([], []) for _ in queries]
        for i, counts in zip(owner, counted, strict=True):
            wholes[i][0].extend(counts[0])
            wholes[i][1].extend(counts[1])
        probs = self.scorer.probabilities([*wholes, *(counted[j] for j in scored)])
        results = []
        offset = len(queries)
        for i, query in enumerate(queries):
            count = len(asking[i])
            parts = probs[offset : offset + count]
            offset += count
            results.append(
                self._decide(labels, probs[i], parts, asking[i], query if explain else None)
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
        for position, row in enumerate(parts):
            best = int(np.argmax(row))
            name, value = labels[best], float(row[best])
            if name == OTHER:
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
        words, _ = self.scorer.count(prepare(text))
        ids, weights = self.scorer.vector((words, []))
        row = self.labels.index(label)
        values = weights * self.scorer.coef[row, ids]
        names = {index: name for name, index in self.scorer.word_vocab.items()}
        contributions = list(zip(ids, values, strict=True))
        pairs = sorted(contributions, key=lambda p: -p[1])
        return tuple(names[int(j)] for j, value in pairs[:count] if value > 0)


def model_subject(query: Query) -> str:
    """The subject, when it is the sender's own words (not a thread reply's or a forward's)."""
    if query.subject and not query.is_reply and not query.forwarded:
        return query.subject
    return ""


def model_text(query: Query) -> str:
    """What the model reads: the new text, and the subject unless it is a thread reply's."""
    subject = model_subject(query)
    return f"{subject}\n{query.text}" if subject else query.text


def _sklearn_version() -> str:
    """The installed scikit-learn's version, without importing it (that costs a second)."""
    try:
        return importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def save(model: Model, path: Path) -> None:
    """Write the compiled model and its card with joblib (plain arrays, dicts and strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer = model.scorer
    payload = {
        "format": FORMAT,
        "labels": list(LABELS),
        "scorer_labels": list(scorer.labels),
        "sklearn_version": model.card.get("versions", {}).get("scikit-learn", _sklearn_version()),
        "word_vocab": scorer.word_vocab,
        "word_idf": scorer.word_idf,
        "char_vocab": scorer.char_vocab,
        "char_idf": scorer.char_idf,
        "coef": scorer.coef,
        "intercept": scorer.intercept,
        "threshold": model.threshold,
        "margin": model.margin,
        "segment_threshold": model.segment_threshold,
        "card": model.card,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    joblib.dump(payload, tmp, compress=3)
    tmp.replace(path)


def load(path: Path) -> Model:
    """Load a model ``triage train`` wrote; anything else is a ModelError saying what to do.

    The file is a joblib pickle: load only files ``triage train`` wrote (trust it like code).
    """
    if not path.is_file():
        raise ModelError(f"{path}: no model file; run 'triage train' (or set TRIAGE_MODEL_PATH)")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # a pickle can fail in many ways; none is recoverable here
        raise ModelError(
            f"{path}: cannot be read ({type(exc).__name__}); run 'triage train'"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a triage model of this version; run 'triage train'")
    installed = _sklearn_version()
    if payload["sklearn_version"] != installed:
        raise ModelError(
            f"{path}: written by scikit-learn {payload['sklearn_version']}, this is "
            f"{installed}; run 'triage train'"
        )
    saved = list(payload["labels"])
    if saved != list(LABELS) or sorted(payload["scorer_labels"]) != sorted(LABELS):
        raise ModelError(
            f"{path}: trained for {len(saved) - 1} topics, this version has {len(TOPICS)}; "
            "run 'triage train'"
        )
    scorer = Scorer(
        labels=tuple(payload["scorer_labels"]),
        word_vocab=payload["word_vocab"],
        word_idf=np.asarray(payload["word_idf"], dtype=float),
        char_vocab=payload["char_vocab"],
        char_idf=np.asarray(payload["char_idf"], dtype=float),
        coef=np.asarray(payload["coef"], dtype=float),
        intercept=np.asarray(payload["intercept"], dtype=float),
    )
    return Model(
        scorer=scorer,
        threshold=float(payload["threshold"]),
        margin=float(payload["margin"]),
        segment_threshold=float(payload["segment_threshold"]),
        card=dict(payload.get("card", {})),
    )


__all__ = [
    "Classification",
    "Model",
    "Scorer",
    "asks",
    "char_features",
    "load",
    "model_subject",
    "model_text",
    "normalise",
    "prepare",
    "prepare_all",
    "save",
    "segments",
    "sentences_of",
    "word_features",
]
