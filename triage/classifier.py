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
# Model file format; bump when the saved dict changes shape.
FORMAT = 3
# The token pattern of the word features (training.build_pipeline uses the same).
TOKEN_PATTERN = r"(?u)\b\w[\w'-]*\b"
# Character n-gram length of the character features, within words (sklearn's "char_wb"); the
# scorer's 64-bit keys hold four characters, so it is 4.
CHAR_N = 4
# Defaults until `triage train` has chosen thresholds on held-out data.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MARGIN = 0.15
# A sentence or paragraph must be at least this sure to add a second topic to an email.
DEFAULT_SEGMENT_THRESHOLD = 0.6
# Segments shorter than this many characters carry too little to score on their own.
_MIN_SEGMENT_CHARS = 25
# From this many non-zero features on, a batch is scored as one scipy.sparse matrix product
# (twenty times faster than numpy alone, but importing scipy.sparse costs a fifth of a second,
# which one message at a cold start need not pay).
_SPARSE_FROM = 5000
# Spellings people use for the same thing, folded to one token before vectorising
# (vocabulary only, not facts: "step lab" and "StepLab" are one product name). Each pattern
# is matched in lower-case text and only from the start of a word (``_fold`` checks that, so
# each pattern can start with a plain word, which the regex engine skips ahead to: three
# times faster than one pattern of all the variants).
_VARIANT_LIST: tuple[tuple[str, str], ...] = (
    (r"step\s*-?\s*lab\b", "steplab"),
    (r"my\s*-?\s*ect\b", "myect"),
    (r"my\s+ambition\b", "myambition"),
    (r"my\s+teacher\s+training\b", "myteachertraining"),
    (r"manage[- ]training(?: for early career teachers)?(?: service)?\b", "dfeservice"),
    (r"dfe(?:'s)?\s+(?:portal|service|website|site|system)\b", "dfeservice"),
    (r"appropriate\s+bod(?:y|ies)\b", "appropriatebody"),
    (r"delivery\s+partners?\b", "deliverypartner"),
    (r"induction\s+tutors?\b", "inductiontutor"),
    (r"section\s*41\b", "section41"),
    (r"s\.?\s?41\b", "section41"),
    (r"get information about schools\b", "gias"),
    (r"nqts?\b", "ect"),
    (r"e-?mails?\b", "email"),
)
_VARIANTS = tuple((re.compile(pattern), spelling) for pattern, spelling in _VARIANT_LIST)
# Texts scored together are joined into one string, separated by this character: the regular
# expressions and numpy then run once over a batch instead of once per sentence.
_SEPARATOR = "\x00"


def _fold(text: str) -> str:
    """Each variant spelling in lower-case ``text`` replaced by its one token."""
    for pattern, spelling in _VARIANTS:

        def replace(match: re.Match[str], text: str = text, spelling: str = spelling) -> str:
            before = text[match.start() - 1] if match.start() else " "
            return match.group(0) if before.isalnum() or before == "_" else spelling  # \w

        text = pattern.sub(replace, text)
    return text


# A sentence that asks or requests something (only such sentences add a topic to an email):
# a question mark, or an opening that asks, requests or reports a problem. The patterns are
# matched in lower case.
_ASKS = re.compile(
    r"\W*(and |also,? |secondly,? |finally,? |separately,? |but )?"
    r"(how|what|who|where|when|why|which|can|could|do|does|did|is|are|should|would|will|may|"
    r"please|i need|we need|i'd like|we'd like|i would like|i am wondering|i'm wondering|"
    r"wondering|not sure|i can't|we can't|i cannot|i'm unable|we're unable|i am unable|"
    r"none of|i haven't|we haven't|they haven't|i won't|i will not|i'm not able|i am not able)\b"
)
# A problem reported anywhere in a sentence asks for help as much as a question does.
_REPORTS = re.compile(
    r"\b(can't|cannot|can not|won't be able|unable|isn't showing|aren't showing|not showing|"
    r"not appearing|isn't appearing|aren't appearing|haven't (?:had|received|got)|"
    r"hasn't (?:had|received|got)|still (?:isn't|aren't|hasn't|haven't|can't|doesn't|don't)|"
    r"(?:neither|none|nobody|no one)\b[^.?!]{0,50}?\b(?:has|have) (?:had|received|got|been able)|"
    r"nothing\b[^.?!]{0,50}?\b(?:has|have) (?:arrived|come through|turned up|been received))\b"
)
# Every report above holds one of these: a sentence without them is not searched (faster).
_REPORT_WORDS = ("n't", "not", "unable", "neither", "none", "nobody", "no one", "nothing")
# An indirect question anywhere in a sentence: "they are asking me how ...", "I'd like to know if".
_ASKS_INDIRECT = re.compile(
    r"\b(ask(ing|ed)?|know|wonder(ing|ed)?|clarify|confirm|explain|tell (me|us)|advise|"
    r"unsure|not sure|unclear)\b.{0,40}?\b(how|what|who|where|when|why|which|whether|if)\b"
)
_INDIRECT_WORDS = (
    "ask", "know", "wonder", "clarify", "confirm", "explain", "tell ", "advise", "unsure",
    "not sure", "unclear",
)  # fmt: skip
# A question read with the sentence before it must be this sure to add a topic (more than a
# sentence alone: the sentence before may be about another matter).
_WINDOW_SEGMENT = 0.8
# A sentence this sure of a topic counts as asking it even without asking words.
_SURE_SEGMENT = 0.95
# When the whole email is unsure (two questions split its probability), asking sentences this
# sure of the whole email's top topic let it be answered after all.
_FALLBACK_SEGMENT = 0.8
_FALLBACK_WHOLE = 0.3
# Sentence ends: ". " before a capital (not "e.g. the"); "? ", "! " and "; " before anything
# (people start the next sentence in lower case: "...on step lab? also she's..."); a blank
# line; a line that starts a list item. And where a run-on sentence turns to another matter:
# ", also ...", " - also ...", ", and while I'm emailing, ...".
# (Every end starts at a space or a comma: the leading lookahead lets the scan skip the rest.)
_SENTENCE_SPLIT = re.compile(
    r"(?=[\s,])(?:(?<=\.)\s+(?=[A-Z0-9\"'(])|(?<=[?!;])\s+|\n\s*\n|\n(?=\s*[-*\u2022\d]+[.)]?\s)"
    r"|,\s+(?=(?i:(?:and\s+)?also\b|and while i'?m\b))|\s[-\u2013]\s+(?=(?i:also\b)))"
)


# The start of a list item: "1)", "2.", "a)", "-", "*", "\u2022".
_LIST_ITEM = re.compile(r"(?:\d{1,2}[.)]|[a-z][.)]|\([a-z0-9]\)|[-*\u2022])\s")


def normalise(text: str) -> str:
    """Lower case, spelling variants and whitespace folded: what the features are made from, in
    training and classifying alike (a NUL is a space: ``_prepared_points`` separates texts
    with it)."""
    return " ".join(_fold(text.replace(_SEPARATOR, " ").lower()).split())


def prepare(text: str) -> str:
    """What the features are made from (``normalise``; the training pipeline's name for it)."""
    return normalise(text)


def asks(sentence: str) -> bool:
    """Whether a sentence asks or requests something (see ``_ASKS``)."""
    if "?" in sentence:
        return True
    low = sentence.lower()
    return bool(
        _ASKS.match(low)
        or (any(word in low for word in _INDIRECT_WORDS) and _ASKS_INDIRECT.search(low))
        or (any(word in low for word in _REPORT_WORDS) and _REPORTS.search(low))
    )


def sentences_of(text: str) -> list[str]:
    """Every sentence and short paragraph of a text, in the order written. In a list item, a
    question too short to score on its own asks about the sentence before it, and joins it
    ("1) She can't come to the conference. Who do I tell?"); in prose it may as well ask about
    the whole email ("... registered weeks ago. What am I missing?"), and stays apart."""
    sentences: list[str] = []
    item = False  # whether the last sentence is in a list item
    for part in _SENTENCE_SPLIT.split(text):
        part = part.strip() if part else ""
        if not part:
            continue
        if _LIST_ITEM.match(part):
            item = True
        elif "\n" in part:
            item = False
        if item and sentences and len(part) < _MIN_SEGMENT_CHARS and asks(part):
            sentences[-1] = f"{sentences[-1]} {part}"
        else:
            sentences.append(part)
    return sentences


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _questions_after_context(text: str, sentences: list[str]) -> set[int]:
    """The questions (positions among ``sentences``) that follow another sentence of their
    paragraph. A question often leans on the sentence before it ("...his induction will need to
    run longer. How do we go about getting it extended?"), so it may be scored with it too."""
    asked = [position for position, s in enumerate(sentences) if position and "?" in s]
    leaning: set[int] = set()
    if not asked:
        return leaning
    at = 0
    previous_end = -1  # where the sentence before ends in ``text`` (-1: none to lean on)
    for position, sentence in enumerate(sentences[: asked[-1] + 1]):
        start = text.find(sentence, at)
        if start < 0:  # a list item joined to its question: not as written
            previous_end = -1
            continue
        if (
            "?" in sentence
            and previous_end >= 0
            and not _BLANK_LINE.search(text, previous_end, start)
        ):
            leaning.add(position)
        previous_end = at = start + len(sentence)
    return leaning


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
# Word characters (regex \w) among the ASCII code points; others are looked up when met.
_ASCII_WORD = np.array([chr(c).isalnum() or chr(c) == "_" for c in range(128)])
_ASCII_SPACE = np.array([chr(c).isspace() for c in range(128)])
_APOSTROPHE, _HYPHEN, _SPACE = ord("'"), ord("-"), ord(" ")
# A character's code in the character n-gram keys when no gram of the vocabulary holds it.
_UNKNOWN = 0xFFFF


def _prepared_points(texts: Sequence[str]) -> np.ndarray:
    """The code points of ``prepare`` of each text, joined by the separator, padded with a
    space on each side of each text (as scikit-learn's "char_wb" pads each word): one array for
    a whole batch. Runs of whitespace become one space here, in numpy, as ``str.split`` and
    ``" ".join`` make them in ``normalise`` (twice as fast over a batch)."""
    joined = f" {_SEPARATOR} ".join(t.replace(_SEPARATOR, " ") for t in texts)
    points = _points(f" {_fold(joined.lower())} ")
    space = _is_space(points)
    if space.any():
        points = np.where(space, np.uint32(_SPACE), points)[~(space & np.r_[False, space[:-1]])]
    return points


def _by_character(points: np.ndarray, ascii_table: np.ndarray, test: str) -> np.ndarray:
    """``getattr(chr(c), test)()`` of each code point: ``ascii_table`` below 128, and asked of
    each distinct character above (few in support mail)."""
    result: np.ndarray = ascii_table[np.minimum(points, 127)]
    wide = np.flatnonzero(points > 127)
    if len(wide):
        distinct, where = np.unique(points[wide], return_inverse=True)
        result[wide] = np.array([getattr(chr(c), test)() for c in distinct.tolist()])[where]
    return result


def _is_space(points: np.ndarray) -> np.ndarray:
    """Whether each code point is whitespace, as ``str.split`` has it."""
    return _by_character(points, _ASCII_SPACE, "isspace")


def _word_characters(points: np.ndarray) -> np.ndarray:
    """Whether each code point is a word character, as regex \\w has it (alphanumeric, "_")."""
    return _by_character(points, _ASCII_WORD, "isalnum")


def word_features(prepared: str) -> list[str]:
    """Word 1- and 2-grams, exactly as scikit-learn's CountVectorizer makes them."""
    tokens = _TOKENS.findall(prepared)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def _gram_keys(grams: Sequence[str], table: np.ndarray) -> np.ndarray:
    """The integer key of each character n-gram: 16 bits a character (its code in ``table``),
    left-aligned (a shorter gram, a one-letter word's, ends in zeros, which no character has)."""
    lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
    points = _points(_SEPARATOR.join(grams) + _SEPARATOR * CHAR_N)
    starts = np.r_[0, np.cumsum(lengths + 1)[:-1]].astype(np.int64)
    keys = np.zeros(len(grams), dtype=np.uint64)
    for k in range(CHAR_N):
        codes = table[points[starts + k]].astype(np.uint64)
        codes[lengths <= k] = 0
        keys |= codes << np.uint64(16 * (CHAR_N - 1 - k))
    return keys


def _points(text: str) -> np.ndarray:
    """The code points of a text."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# Words are looked up by a 64-bit polynomial hash of their code points (modulo 2**64, which an
# odd base makes invertible), so that no word string is built. A word outside the vocabulary
# hashes like one inside it with odds of about one in 10**11 a batch of 200 emails (and then
# counts as that word); two words of a vocabulary that hash alike are refused when it loads.
_HASH_BASE = 1_000_003
_INVERSE = pow(_HASH_BASE, -1, 2**64)
# The base's powers and inverse powers, grown as longer batches come (one tuple, replaced
# whole, so that threads never see one array grown and the other not).
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers_to(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The base's powers and inverse powers 0 .. n - 1 (at least)."""
    global _powers
    powers = _powers
    if len(powers[0]) < n:
        size = max(n, 2 * len(powers[0]))
        powers = (
            np.r_[np.uint64(1), np.cumprod(np.full(size - 1, _HASH_BASE, dtype=np.uint64))],
            np.r_[np.uint64(1), np.cumprod(np.full(size - 1, _INVERSE, dtype=np.uint64))],
        )
        _powers = powers
    return powers


def _span_hashes(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The hash of each span ``points[start:end]``: the sum of its code points times the base's
    powers (the first point times 1), from one prefix sum over all the points."""
    powers, inverses = _powers_to(len(points) + 1)
    prefix = np.zeros(len(points) + 1, dtype=np.uint64)
    np.cumsum(points.astype(np.uint64) * powers[: len(points)], out=prefix[1:])
    hashes: np.ndarray = (prefix[ends] - prefix[starts]) * inverses[starts]
    return hashes


def _word_hashes(words: Sequence[str]) -> np.ndarray:
    """``_span_hashes`` of each word, as the features find them in a text."""
    return _span_hashes(*_joined(words))


def _joined(items: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The code points of ``items`` joined by the separator, and where each item starts and
    ends among them."""
    points = _points(_SEPARATOR.join(items))
    breaks = np.flatnonzero(points == 0)
    if not items:
        return points, breaks, breaks
    return points, np.r_[0, breaks + 1], np.r_[breaks, len(points)]


class KeyTable:
    """Non-zero integer keys -> ids, looked up for a whole array of keys at once: a hash table
    with linear probing, in numpy (four times faster than a binary search of sorted keys)."""

    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing

    def __init__(self, keys: np.ndarray, ids: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if np.any(keys == 0):
            raise ValueError("a KeyTable key may not be 0 (0 marks an empty slot)")
        bits = max(4, (4 * len(keys)).bit_length())  # at most a quarter full
        self._shift = np.uint64(64 - bits)
        self._mask = np.uint64((1 << bits) - 1)
        self._keys = np.zeros(1 << bits, dtype=np.uint64)
        self._ids = np.full(1 << bits, -1, dtype=np.int64)
        self._probes = 0  # the longest run from a key's home slot to its own
        pending, slots = np.arange(len(keys)), self._home(keys)
        while len(pending):
            free = np.flatnonzero(self._keys[slots] == 0)
            _, first = np.unique(slots[free], return_index=True)  # one key per free slot
            placed = free[first]
            self._keys[slots[placed]] = keys[pending[placed]]
            self._ids[slots[placed]] = ids[pending[placed]]
            left = np.ones(len(pending), dtype=bool)
            left[placed] = False
            pending, slots = pending[left], (slots[left] + np.uint64(1)) & self._mask
            self._probes += 1

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys * self._MULTIPLIER) >> self._shift

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The id of each key, or -1 for a key not in the table."""
        slots = self._home(keys)
        stored = self._keys[slots]
        found: np.ndarray = self._ids[slots]
        missed = stored != keys
        found[missed] = -1
        pending = np.flatnonzero(missed & (stored != 0))  # home slot taken by another key
        slots = slots[pending]
        for _ in range(1, self._probes):
            if not len(pending):
                break
            slots = (slots + np.uint64(1)) & self._mask
            stored = self._keys[slots]
            hit = stored == keys[pending]
            found[pending[hit]] = self._ids[slots[hit]]
            going = ~hit & (stored != 0)
            pending, slots = pending[going], slots[going]
        return found


@dataclass(frozen=True)
class Scorer:
    """A trained linear model as plain data: vocabularies, IDF weights, coefficients.

    Features are found for a whole batch of texts at once, in numpy over the code points of
    one string: words by a hash of each span, word pairs and character n-grams by integer keys,
    all looked up in numpy hash tables (each character of the vocabulary's
    alphabet a 16-bit code), so no n-gram string is built. The result is what scikit-learn's
    vectorizers give (tests compare them, text by text).
    """

    labels: tuple[str, ...]
    word_vocab: dict[str, int]
    word_idf: np.ndarray
    char_vocab: dict[str, int]
    char_idf: np.ndarray
    coef: np.ndarray  # labels x (words + chars)
    intercept: np.ndarray
    # Derived from the above when built (not saved):
    _singles: KeyTable = field(init=False, repr=False)  # a single word's hash -> id
    _pairs: KeyTable = field(init=False, repr=False)  # (first * words + second + 1) -> id
    _table: np.ndarray = field(init=False, repr=False)  # code point -> character code
    _grams: KeyTable = field(init=False, repr=False)  # character n-gram key -> id
    _idf: np.ndarray = field(init=False, repr=False)  # words' then characters'
    _coef_t: np.ndarray = field(init=False, repr=False)  # features x labels, for row gathers

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        words = self.word_vocab
        singles = [gram for gram in words if " " not in gram]
        hashes = _word_hashes(singles)
        if len(np.unique(hashes)) != len(hashes) or not hashes.all():
            raise ModelError("two words of the model's vocabulary hash alike: change _HASH_BASE")
        put("_singles", KeyTable(hashes, np.array([words[w] for w in singles], dtype=np.int64)))
        # Each word pair "a b" by the ids of its two words (a pair of words the vocabulary does
        # not hold alone can never be found, and is left out).
        doubles = [gram for gram in words if " " in gram]
        points, starts, ends = _joined(doubles)
        middles = np.flatnonzero(points == _SPACE)  # one in each pair
        firsts = self._singles.find(_span_hashes(points, starts, middles))
        seconds = self._singles.find(_span_hashes(points, middles + 1, ends))
        held = (firsts >= 0) & (seconds >= 0)
        put(
            "_pairs",
            KeyTable(
                (firsts[held] * len(words) + seconds[held] + 1).astype(np.uint64),
                np.array([words[d] for d in doubles], dtype=np.int64)[held],
            ),
        )
        characters = sorted(set("".join(self.char_vocab)) | {" "})
        if len(characters) >= _UNKNOWN:
            raise ModelError("the character n-grams have too many distinct characters")
        table = np.full(0x110000, _UNKNOWN, dtype=np.uint16)
        table[[ord(ch) for ch in characters]] = np.arange(1, len(characters) + 1)
        put("_table", table)
        put(
            "_grams",
            KeyTable(
                _gram_keys(list(self.char_vocab), table),
                np.fromiter(self.char_vocab.values(), dtype=np.int64, count=len(self.char_vocab))
                + len(words),
            ),
        )
        put("_idf", np.concatenate([self.word_idf, self.char_idf]))
        put("_coef_t", np.ascontiguousarray(self.coef.T))

    @property
    def n_features(self) -> int:
        return len(self.word_vocab) + len(self.char_vocab)

    def features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every known feature of each text (raw; prepared here), with repeats, as two arrays:
        (index of the text, feature id). Word ids come first, then characters'."""
        if not texts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        points = _prepared_points(texts)
        places = np.cumsum(points == 0)  # which text each character belongs to
        word_rows, word_ids = self._words(points, places)
        gram_rows, gram_ids = self._grams_of(points, places)
        return np.concatenate([word_rows, gram_rows]), np.concatenate([word_ids, gram_ids])

    def _words(self, points: np.ndarray, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Known words and word pairs: (text, id) of each."""
        # TOKEN_PATTERN's matches: each run of word characters, apostrophes and hyphens holds
        # one, from its first word character to its last.
        word = _word_characters(points)
        joins = word | (points == _APOSTROPHE) | (points == _HYPHEN)
        runs = np.cumsum(joins & ~np.r_[False, joins[:-1]])
        at = np.flatnonzero(word)
        edges = np.ones(len(at) + 1, dtype=bool)  # [i]: a run ends before at[i] (and at the end)
        edges[1:-1] = runs[at[1:]] != runs[at[:-1]]
        starts, ends = at[edges[:-1]], at[edges[1:]] + 1
        ids = self._singles.find(_span_hashes(points, starts, ends))
        owner = places[starts]
        known = ids >= 0
        # Word pairs: two known words in a row in the same text.
        both = np.flatnonzero(known[:-1] & known[1:] & (owner[:-1] == owner[1:]))
        pair_ids = self._pairs.find(
            (ids[both] * len(self.word_vocab) + ids[both + 1] + 1).astype(np.uint64)
        )
        pairs = pair_ids >= 0
        return (
            np.concatenate([owner[known], owner[both][pairs]]),
            np.concatenate([ids[known], pair_ids[pairs]]),
        )

    def _grams_of(self, points: np.ndarray, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Known character n-grams: (text, id) of each. Every window is looked up at once;
        those with a space inside, or a separator, are in no vocabulary and fall away."""
        codes = self._table[points].astype(np.uint64)
        keys = (codes[:-3] << 48) | (codes[1:-2] << 32) | (codes[2:-1] << 16) | codes[3:]
        gram_ids = self._grams.find(keys)
        # A one-letter word is its own (three-character) gram: " a ".
        space = self._table[_SPACE]
        alone = np.flatnonzero(
            (codes[1:-1] != space) & (codes[:-2] == space) & (codes[2:] == space)
        )
        short_ids = self._grams.find(
            (codes[alone] << 48) | (codes[alone + 1] << 32) | (codes[alone + 2] << 16)
        )
        grams, shorts = gram_ids >= 0, short_ids >= 0
        return (
            np.concatenate([places[:-3][grams], places[alone][shorts]]),
            np.concatenate([gram_ids[grams], short_ids[shorts]]),
        )

    def weights(
        self, rows: np.ndarray, ids: np.ndarray, n_rows: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TF-IDF rows from feature occurrences, as sklearn makes them (sublinear tf, idf, l2
        per branch): (row, feature id, weight), sorted by row then feature."""
        width = self.n_features
        keys = np.sort(rows * width + ids)  # (np.unique does this too, three times slower)
        starts = np.flatnonzero(np.r_[len(keys) > 0, keys[1:] != keys[:-1]])
        tf = np.diff(np.r_[starts, len(keys)])
        rows, ids = np.divmod(keys[starts], width)
        values = (1.0 + np.log(tf)) * self._idf[ids]
        branch = rows * 2 + (ids >= len(self.word_vocab))
        norms = np.sqrt(np.bincount(branch, weights=values * values, minlength=2 * n_rows))
        return rows, ids, values / norms[branch]

    def probabilities(self, rows: np.ndarray, ids: np.ndarray, n_rows: int) -> np.ndarray:
        """Multinomial logistic regression probabilities of ``n_rows`` rows, given their feature
        occurrences (row, feature id), as ``features`` finds them."""
        rows, ids, values = self.weights(rows, ids, n_rows)
        if len(values) >= _SPARSE_FROM:
            from scipy import sparse

            starts = np.searchsorted(rows, np.arange(n_rows + 1))
            matrix = sparse.csr_matrix((values, ids, starts), shape=(n_rows, self.n_features))
            scores: np.ndarray = np.asarray(matrix @ self._coef_t) + self.intercept
        else:
            scores = np.tile(self.intercept, (n_rows, 1))
            if len(rows):
                starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
                gathered = self._coef_t[ids] * values[:, None]
                scores[rows[starts]] += np.add.reduceat(gathered, starts)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def probabilities_of(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities of each label for whole (raw) texts."""
        rows, ids = self.features(texts)
        return self.probabilities(rows, ids, len(texts))


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
        return self.scorer.probabilities_of(texts)

    def classify(self, query: Query, *, explain: bool = False) -> Classification:
        """Classify one message; see ``classify_many`` for batches."""
        return self.classify_many([query], explain=explain)[0]

    def classify_many(
        self, queries: Sequence[Query], *, explain: bool = False
    ) -> list[Classification]:
        """Classify messages in one batch: the whole text and each of its sentences.

        Each sentence is read once; the whole email's features are the sum of its sentences'.
        Then a question that said nothing sure on its own is scored again with the sentence
        before it (``_questions_after_context``), from the same features.
        """
        labels = self.labels
        if not queries:
            return []
        pieces: list[str] = []  # every sentence of every email (and its subject, if read)
        owner: list[int] = []
        part: list[int] = []  # for each piece, its row when scored on its own, else -1
        # Each email's entries: (order, row, text), the subject's order -1, a sentence's its
        # position; the row is among the pieces scored alone.
        entries: list[list[tuple[float, int, str]]] = []
        # Each question after context: (email, its piece, the piece before it, its order, its
        # row alone or -1).
        leaning: list[tuple[int, int, int, float, int]] = []
        scored = len(queries)  # rows: the whole emails, then the sentences scored alone
        for i, query in enumerate(queries):
            subject = model_subject(query)
            long_enough = len(query.text) > 80
            mine: list[tuple[float, int, str]] = []
            if subject:
                pieces.append(subject)
                owner.append(i)
                if long_enough and len(subject) >= _MIN_SEGMENT_CHARS and asks(subject):
                    # A subject that asks is a question of its own ("Can I use my My Teacher
                    # Training login for MyECT?" above "Also, I'm moving schools at Easter...").
                    part.append(scored)
                    mine.append((-1, scored, subject))
                    scored += 1
                else:
                    part.append(-1)
            sentences = sentences_of(query.text)
            after = _questions_after_context(query.text, sentences) if long_enough else set()
            for position, sentence in enumerate(sentences):
                row = -1
                if long_enough and len(sentence) >= _MIN_SEGMENT_CHARS:
                    row = scored
                    mine.append((position, scored, sentence))
                    scored += 1
                part.append(row)
                pieces.append(sentence)
                owner.append(i)
                if position in after:
                    leaning.append((i, len(pieces) - 1, len(pieces) - 2, position + 0.5, row))
            entries.append(mine)
        piece, ids = self.scorer.features(pieces)
        rows = np.asarray(part, dtype=np.int64)[piece]
        alone = rows >= 0
        probs = self.scorer.probabilities(
            np.concatenate([np.asarray(owner, dtype=np.int64)[piece], rows[alone]]),
            np.concatenate([ids, ids[alone]]),
            scored,
        )
        best = probs.argmax(axis=1).tolist()  # each row's label and its probability
        value = probs.max(axis=1).tolist()
        other = labels.index(OTHER)
        reordered: set[int] = set()  # the emails with a window among their entries
        window_best: list[int] = []
        window_value: list[float] = []
        # Each question that said nothing sure alone (not as sure as a window must be), with
        # the sentence before it: one more row, made of both pieces' features (as the whole
        # email is made of all of them).
        unsure = [
            w for w in leaning if w[4] < 0 or best[w[4]] == other or value[w[4]] < _WINDOW_SEGMENT
        ]
        if unsure:
            question = np.full(len(pieces), -1, dtype=np.int64)
            context = np.full(len(pieces), -1, dtype=np.int64)
            for k, (i, asked, before, order, _) in enumerate(unsure):
                question[asked] = context[before] = k
                entries[i].append((order, -1 - k, pieces[asked]))  # windows' rows: -1, -2, ...
                reordered.add(i)
            as_question, as_context = question[piece], context[piece]
            found, leans = as_question >= 0, as_context >= 0
            windows = self.scorer.probabilities(
                np.concatenate([as_question[found], as_context[leans]]),
                np.concatenate([ids[found], ids[leans]]),
                len(unsure),
            )
            window_best = windows.argmax(axis=1).tolist()
            window_value = windows.max(axis=1).tolist()
        wholes = probs[: len(queries)]
        ranked = np.argsort(wholes, axis=1)[:, -2:].tolist()  # [runner-up, top] of each email
        whole_rows = wholes.tolist()
        results = []
        for i, query in enumerate(queries):
            results.append(
                self._decide(
                    labels,
                    whole_rows[i],
                    ranked[i],
                    [
                        (best[row], value[row], text, False)
                        if row >= 0
                        else (window_best[-1 - row], window_value[-1 - row], text, True)
                        for _, row, text in (
                            sorted(entries[i], key=lambda e: e[0]) if i in reordered else entries[i]
                        )
                    ],
                    query if explain else None,
                )
            )
        return results

    def _decide(
        self,
        labels: list[str],
        whole: list[float],
        ranked: list[int],
        sentences: list[tuple[int, float, str, bool]],
        explain_for: Query | None,
    ) -> Classification:
        """The topics of one email from its whole-text probabilities, its two best labels, and
        each scored sentence's (best label, probability, text, whether a question window)."""
        second, top = ranked
        label = labels[top]
        confidence = whole[top]
        margin = confidence - whole[second]
        # Topics the sentences ask about, in the order written: a sentence counts when it
        # asks something and is sure enough of one topic, or is very sure of it (whether it
        # asks is only read for the few that this decides).
        first_seen: dict[str, int] = {}
        best_seen: dict[str, float] = {}
        for position, (best, value, text, window) in enumerate(sentences):
            name = labels[best]
            if name == OTHER:
                continue
            if value < (_WINDOW_SEGMENT if window else self.segment_threshold):
                continue
            if value < _SURE_SEGMENT and not asks(text):
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
            scores=dict(zip(labels, whole, strict=True)),
            topics=tuple(topics),
            label=label,
            confidence=confidence,
            margin=margin,
            confident=confident,
            terms=terms,
        )

    def explain(self, text: str, label: str, *, count: int = 8) -> tuple[str, ...]:
        """The word features that pushed ``text`` towards ``label`` the most."""
        rows, ids = self.scorer.features([text])
        words = ids < len(self.scorer.word_vocab)
        _, ids, weights = self.scorer.weights(rows[words], ids[words], 1)
        values = weights * self.scorer.coef[self.labels.index(label), ids]
        names = {index: name for name, index in self.scorer.word_vocab.items()}
        pairs = sorted(zip(ids, values, strict=True), key=lambda p: -p[1])
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


def _terms(vocabulary: dict[str, int]) -> str:
    """A vocabulary as one string, its terms in id order: one pickle opcode to load, where a
    dict of 40,000 terms is 80,000 (joblib unpickles in pure Python: a fifth of a second)."""
    terms = sorted(vocabulary, key=vocabulary.__getitem__)
    if [vocabulary[t] for t in terms] != list(range(len(terms))):
        raise ValueError("vocabulary ids are not 0..n-1")
    return _SEPARATOR.join(terms)  # no term holds one: prepare() makes it a space


def _vocabulary(terms: str) -> dict[str, int]:
    return {term: i for i, term in enumerate(terms.split(_SEPARATOR))} if terms else {}


def save(model: Model, path: Path) -> None:
    """Write the compiled model and its card with joblib (plain arrays and strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer = model.scorer
    payload = {
        "format": FORMAT,
        "labels": list(LABELS),
        "scorer_labels": list(scorer.labels),
        "sklearn_version": model.card.get("versions", {}).get("scikit-learn", _sklearn_version()),
        "word_terms": _terms(scorer.word_vocab),
        "word_idf": scorer.word_idf,
        "char_terms": _terms(scorer.char_vocab),
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
        word_vocab=_vocabulary(payload["word_terms"]),
        word_idf=np.asarray(payload["word_idf"], dtype=float),
        char_vocab=_vocabulary(payload["char_terms"]),
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
    "KeyTable",
    "Model",
    "Scorer",
    "asks",
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
