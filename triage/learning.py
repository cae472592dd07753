"""Learning: staff corrections from the mailbox -> training data (``triage learn``), and the gate
that keeps ``triage train`` from installing a worse model (``compare``).

Staff teach the model in their mail client: ``triage learn --setup`` creates ``Triage/<topic>``
folders, staff move or copy a misclassified message into the right one, and ``triage learn``
reads each exactly as classification does into ``corrections.csv`` beside the paraphrases. It
also reads the Sent folder: a reply that began as our draft was accepted, and how much staff
changed it before sending goes to the journal (``triage stats`` turns that into live precision).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import email
import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.classifier import Classification, Model, model_text
from triage.config import Settings
from triage.errors import ConfigError, SampleError
from triage.evaluation import Scores, score_labels
from triage.journal import Entry, Journal
from triage.mailbox import SOURCE_HEADER, Incoming
from triage.query import Query, body_text, decode_header, parse
from triage.topics import LABELS, OTHER

if TYPE_CHECKING:  # training imports scikit-learn: loaded only where a model is trained or read
    from triage.mailbox import Mailbox
    from triage.reply import Composer
    from triage.routing import Router
    from triage.training import Example

log = logging.getLogger(__name__)

# The staff corrections file in the training directory (training.CORRECTIONS reads it).
CORRECTIONS = "corrections.csv"
# The folder staff file corrections under: Triage/<topic id>, one per label (Triage/other too).
TRIAGE_FOLDER = "Triage"
# Columns of corrections.csv: training reads topic and text; the rest say where a row came from
# and are what a row is deduplicated by (Message-ID; the text when there is none).
CORRECTION_COLUMNS = ("topic", "text", "source", "message_id", "added_at")
# The gate's held-out data: this share of each label, never trained on. An example is held out
# when its text's hash ranks in the lowest fifth of its label's, so the same examples stay held
# out as the data grows and a model trained the gated way has never seen any of them.
HELD_OUT_FRACTION = 0.2
HELD_OUT_RULE = "sha256 rank, 20% of each label"
# A new model "not worse" may trail the installed one by this much on macro-F1 and on reply
# precision: on ~330 held-out texts one text either way moves them by about 0.003-0.004, and a
# refit on a little more data moves a text or two; a worse training set costs far more.
GATE_TOLERANCE = 0.005

_QUOTE_MARKS = re.compile(r"^>+$")


# --- corrections.csv ----------------------------------------------------------------------------


def _key(text: str) -> str:
    """The text as the training data check compares it (``training.check``: case, punctuation and
    spacing do not count)."""
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())


def read_as_classified(raw: bytes, *, support_address: str) -> tuple[Query, str]:
    """The parsed message and the text the model reads from it (``classifier.model_text``)."""
    query = parse(raw, support_address=support_address)
    return query, model_text(query).strip()


class Corrections:
    """``corrections.csv`` in the training directory: staff labels, one row per message.

    ``add`` dedupes by Message-ID (else by text): the same label again is a no-op, another label
    replaces the row (the latest word of staff counts), and a text already in the paraphrases
    is left out (the training data check refuses duplicates). ``save`` writes the file whole,
    through a temporary file, so a crash leaves the old one.
    """

    def __init__(self, directory: Path) -> None:
        from triage.training import PARAPHRASES, read_examples

        self.path = directory / CORRECTIONS
        paraphrases = directory / PARAPHRASES
        self._paraphrases = (
            {_key(ex.text): ex.label for ex in read_examples(paraphrases)}
            if paraphrases.is_file()
            else {}
        )
        self.rows: list[dict[str, str]] = []
        self.columns = list(CORRECTION_COLUMNS)
        if self.path.is_file():
            try:
                with self.path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    fields = list(reader.fieldnames or ())
                    if not {"topic", "text"} <= set(fields):
                        raise SampleError(
                            f"{self.path}: needs the columns topic,text (has {fields})"
                        )
                    self.columns += [f for f in fields if f not in self.columns]
                    self.rows = [{k: (v or "") for k, v in row.items() if k} for row in reader]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SampleError(f"{self.path}: not a UTF-8 CSV file ({exc})") from exc
        self.changed = False

    def add(self, topic: str, text: str, *, message_id: str = "", source: str = "") -> str:
        """Record one label: "added", "replaced", "present", or "in paraphrases" (left out)."""
        if topic not in LABELS:
            raise SampleError(f"unknown topic {topic!r}; known topics are in triage/topics.py")
        text = text.strip()
        key = _key(text)
        if not key:
            raise SampleError("an empty text cannot be a correction")
        message_id = " ".join(message_id.split())
        row = next((r for r in self.rows if message_id and r.get("message_id") == message_id), None)
        if row is None:
            row = next((r for r in self.rows if _key(r.get("text", "")) == key), None)
        if row is not None:
            if row.get("topic") == topic:
                return "present"
            row.update(topic=topic, text=text, source=source, added_at=_now())
            if message_id:
                row["message_id"] = message_id
            self.changed = True
            return "replaced"
        if key in self._paraphrases:
            return "present" if self._paraphrases[key] == topic else "in paraphrases"
        self.rows.append(
            {
                "topic": topic,
                "text": text,
                "source": source,
                "message_id": message_id,
                "added_at": _now(),
            }
        )
        self.changed = True
        return "added"

    def save(self) -> None:
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        self.changed = False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- drafts and what staff sent -----------------------------------------------------------------


def text_body(raw: bytes | Message) -> str:
    """The text of a message as a person reads it (text/plain, else the HTML as text)."""
    message = email.message_from_bytes(raw) if isinstance(raw, bytes) else raw
    return body_text(message)


def _words(text: str) -> list[str]:
    """Words of a text; quote marks and line breaks do not count (mail clients re-wrap)."""
    return [w for w in text.split() if not _QUOTE_MARKS.match(w)]


def similarity(drafted: str, sent: str) -> float:
    """How much of the draft is left in what was sent: difflib's ratio over words, 0..1."""
    a, b = _words(drafted), _words(sent)
    if a == b:
        return 1.0
    return round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4)


def render_draft(
    composer: Composer,
    router: Router,
    query: Query,
    topics: Sequence[str],
    reason: str,
    *,
    confidence: float = 1.0,
) -> EmailMessage:
    """A draft reply for these topics (a staff correction, or a draft rendered again)."""
    from triage.routing import Decision

    decision = Decision("reply", tuple(topics), reason, confidence, school=router.school(query))
    return composer.render_reply(decision, query)


def find_original(mailbox: Mailbox, entry: Entry, settings: Settings) -> Incoming | None:
    """An entry's original, where the journal says it is, or in the hand-off folder."""
    folders = [entry.folder]
    if settings.imap_handoff_folder and settings.imap_handoff_folder not in folders:
        folders.append(settings.imap_handoff_folder)
    for folder in folders:
        found = mailbox.fetch_original(folder, entry.uidvalidity, entry.uid, entry.message_id)
        if found is not None:
            return found
    return None


# --- the gate -----------------------------------------------------------------------------------


def _rank(text: str) -> str:
    return hashlib.sha256(_key(text).encode()).hexdigest()


def split(
    examples: Sequence[Example], *, fraction: float = HELD_OUT_FRACTION
) -> tuple[list[Example], list[Example]]:
    """(to train on, held out): of each label, the ``fraction`` whose texts hash lowest."""
    held: set[int] = set()
    by_label: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(i)
    for indices in by_label.values():
        ranked = sorted(indices, key=lambda i: _rank(examples[i].text))
        held.update(ranked[: int(len(ranked) * fraction)])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


# What `triage train` holds out for the gate: a fifth of the staff corrections (the paraphrases
# are all trained on: holding a fifth of them out cost 0.04 macro-F1 on real mail), and the
# labelled emails of samples/, which are never trained on.
GATE_RULE = "staff corrections: sha256 rank, 20% of each label; and the labelled emails in samples/"


def gate_split(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(to train on, held out): every paraphrase trains; a fifth of the corrections is held out."""
    corrections = [ex for ex in examples if _is_correction(ex)]
    _, held = split(corrections)
    held_ids = {id(ex) for ex in held}
    return [ex for ex in examples if id(ex) not in held_ids], held


def held_out_emails(directory: Path, *, support_address: str) -> list[Example]:
    """The labelled emails of ``samples/`` as examples, read as classification reads them
    (automatic mail and multi-question mail left out: the gate scores one label per text)."""
    from triage.evaluation import collect
    from triage.training import Example

    if not directory.is_dir():
        return []
    out = []
    for case in collect([directory]):
        if case.kind not in ("single", "other"):
            continue
        query = parse(case.path.read_bytes(), support_address=support_address)
        out.append(Example(case.topics[0], model_text(query), f"{directory.name}/{case.path.name}"))
    return out


def card_entry(trained_on: Sequence[Example], held_out: Sequence[Example]) -> dict[str, Any]:
    """What the model card says about the gate: the rule and the sizes of both parts."""
    return {
        "held_out_rule": GATE_RULE,
        "trained_on": len(trained_on),
        "corrections_trained_on": sum(_is_correction(ex) for ex in trained_on),
        "held_out": len(held_out),
        "corrections_held_out": sum(_is_correction(ex) for ex in held_out),
    }


def _is_correction(ex: Example) -> bool:
    return ex.source.startswith(CORRECTIONS)


def evaluate(model: Model, examples: Sequence[Example]) -> Scores:
    """Macro-F1 (of the top label), reply precision and coverage (of what would be answered)
    of a model on labelled texts, each read as the model reads a message's text."""
    queries = [Query("", "", "", "", ex.text) for ex in examples]
    results: list[Classification] = model.classify_many(queries)
    truth = [ex.label for ex in examples]
    per, macro, confusions = score_labels(truth, [r.label for r in results])
    answered = [(r, t) for r, t in zip(results, truth, strict=True) if r.topics]
    right = sum(1 for r, t in answered if r.topics[0] == t)
    in_scope = [t for t in truth if t != OTHER]
    covered = sum(1 for r, t in answered if t != OTHER)
    return Scores(
        per_label=per,
        macro_f1=macro,
        confusions=confusions,
        reply_precision=right / len(answered) if answered else 0.0,
        coverage=covered / len(in_scope) if in_scope else 0.0,
        replied=len(answered),
    )


def compare(
    new: Model, installed: Model | None, held_out: Sequence[Example]
) -> tuple[list[str], bool]:
    """Both models on the same held-out data, side by side; accept the new one only if it is not
    worse (within GATE_TOLERANCE) on macro-F1 and on reply precision."""
    if not held_out:
        raise SampleError("no held-out examples to compare the models on; check the training data")
    corrections = sum(_is_correction(ex) for ex in held_out)
    lines = [
        f"held-out data: {len(held_out)} examples never trained on, "
        f"{corrections} of them staff corrections",
        "",
    ]
    fresh = evaluate(new, held_out)
    if installed is None:
        lines.append(f"{'label':<24}{'new f1':>9}{'n':>6}")
        for label, (_, _, f1, n) in fresh.per_label.items():
            lines.append(f"{label:<24}{f1:>9.2f}{n:>6}")
        lines += [
            "",
            f"{'macro-F1':<24}{fresh.macro_f1:>9.3f}",
            f"{'reply precision':<24}{fresh.reply_precision:>9.3f}  ({fresh.replied} answered)",
            f"{'coverage':<24}{fresh.coverage:>9.3f}",
            "",
            "accepted: no model is installed yet",
        ]
        return lines, True
    old = evaluate(installed, held_out)
    lines.append(f"{'label':<24}{'installed':>10}{'new':>8}{'n':>6}")
    for label in LABELS:
        if label not in old.per_label and label not in fresh.per_label:
            continue
        before = old.per_label.get(label, (0.0, 0.0, 0.0, 0))
        after = fresh.per_label.get(label, (0.0, 0.0, 0.0, 0))
        lines.append(f"{label:<24}{before[2]:>10.2f}{after[2]:>8.2f}{max(before[3], after[3]):>6}")
    lines += [
        "",
        f"{'macro-F1':<24}{old.macro_f1:>10.3f}{fresh.macro_f1:>8.3f}"
        f"  ({fresh.macro_f1 - old.macro_f1:+.3f})",
        f"{'reply precision':<24}{old.reply_precision:>10.3f}{fresh.reply_precision:>8.3f}"
        f"  ({fresh.reply_precision - old.reply_precision:+.3f}; answered {old.replied} and "
        f"{fresh.replied})",
        f"{'coverage':<24}{old.coverage:>10.3f}{fresh.coverage:>8.3f}",
        "",
    ]
    if installed.card.get("gate", {}).get("held_out_rule") not in (HELD_OUT_RULE, GATE_RULE):
        lines.append(
            "note: the installed model was not trained the gated way, so it may have seen these "
            "examples and its figures may be too good"
        )
    worse = [
        f"{name} ({after:.3f} < {before:.3f})"
        for name, before, after in (
            ("macro-F1", old.macro_f1, fresh.macro_f1),
            ("reply precision", old.reply_precision, fresh.reply_precision),
        )
        if after < before - GATE_TOLERANCE
    ]
    if worse:
        lines.append(f"refused: the new model is worse on {' and '.join(worse)}")
        return lines, False
    lines.append(
        f"accepted: the new model is not worse on macro-F1 or reply precision "
        f"(tolerance {GATE_TOLERANCE})"
    )
    return lines, True


# --- triage learn -------------------------------------------------------------------------------


def _open_mailbox(settings: Settings) -> Mailbox:
    from triage.cli import open_mailbox  # the one place that chooses IMAP or the Maildir

    return open_mailbox(settings)


def _open_journal(settings: Settings) -> Journal:
    """The journal; an empty one in memory when there is none yet (nothing to link to)."""
    return Journal(settings.state_db, readonly=not Path(settings.state_db).exists())


def _setup(mailbox: Mailbox) -> int:
    created = 0
    names = [mailbox.subfolder(TRIAGE_FOLDER, label) for label in LABELS]
    for name in names:
        created += mailbox.create_folder(name)
    print(
        f"{mailbox.description}: {created} folders created, {len(names) - created} already "
        f"there ({names[0]} ... {names[-1]})"
    )
    print(
        f"move or copy a misclassified message into {mailbox.subfolder(TRIAGE_FOLDER, '<topic>')} "
        f"({names[-1]}: none of the FAQ topics), then run 'triage learn'"
    )
    return 0


def _harvest_folders(
    mailbox: Mailbox, settings: Settings, journal: Journal, corrections: Corrections
) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for label in LABELS:
        folder = mailbox.subfolder(TRIAGE_FOLDER, label)
        if not mailbox.has_folder(folder):
            continue
        counts[label] = Counter()
        for incoming in mailbox.read_folder(folder):
            query, text = read_as_classified(incoming.raw, support_address=settings.support_address)
            if query.problem or query.automatic or not text:
                counts[label]["skipped"] += 1
                continue
            result = corrections.add(
                label, text, message_id=query.message_id, source=f"learn {folder}"
            )
            counts[label][result] += 1
            entry = journal.by_message_id(query.message_id) if query.message_id else None
            if entry is not None and (entry.topics[:1] or (OTHER,))[0] != label:
                journal.record_review(entry.id, "corrected", topics=(label,), source="learn")
    return counts


def drafted_text(
    mailbox: Mailbox,
    settings: Settings,
    journal: Journal,
    entry: Entry,
    *,
    cache: dict[str, Any] | None = None,
) -> str | None:
    """The text of the draft we made for an entry: as the journal kept it, else rendered again
    from its original (the worker's drafts: the same templates give the same text); None when
    neither is there. ``cache`` keeps the templates loaded across calls."""
    if entry.message_id:
        kept = journal.draft_text(entry.message_id)
        if kept is not None:
            return kept
    if entry.action != "reply" or not entry.topics:
        return None
    original = find_original(mailbox, entry, settings)
    if original is None:
        return None
    cache = {} if cache is None else cache
    if not cache:
        from triage.reply import Composer
        from triage.routing import Router

        cache.update(composer=Composer(settings), router=Router.from_settings(settings))
    query = parse(original.raw, support_address=settings.support_address)
    message = render_draft(
        cache["composer"],
        cache["router"],
        query,
        entry.topics,
        entry.reason,
        confidence=entry.confidence,
    )
    return text_body(message.as_bytes())


def _harvest_sent(
    mailbox: Mailbox, settings: Settings, journal: Journal
) -> tuple[Counter[str], list[float]]:
    """Replies in Sent that began as our drafts: counts by verdict, and the changed ones' ratios."""
    counts: Counter[str] = Counter()
    ratios: list[float] = []
    cache: dict[str, Any] = {}
    folder = mailbox.sent_folder()
    for incoming in mailbox.read_folder(folder):
        message = email.message_from_bytes(incoming.raw)
        automatic = str(message.get("Auto-Submitted", "")).strip().lower()
        if automatic and not automatic.startswith("no"):
            continue  # sent without a person: the worker's own, not a review
        source = decode_header(message.get(SOURCE_HEADER))
        if not source:
            replied_to = re.findall(r"<[^<>\s]+>", decode_header(message.get("In-Reply-To")))
            source = replied_to[0] if replied_to else ""
        entry = journal.by_message_id(source) if source else None
        if entry is None:
            continue
        if entry.action != "reply" and journal.draft_text(source) is None:
            continue  # we made no draft for it: a reply staff wrote themselves
        sent_id = decode_header(message.get("Message-ID")) or (
            f"{incoming.folder}/{incoming.uidvalidity}/{incoming.uid}"
        )
        if any(r.sent_message_id == sent_id for r in journal.reviews(entry.id)):
            counts["already"] += 1
            continue
        drafted = drafted_text(mailbox, settings, journal, entry, cache=cache)
        if drafted is None:  # nothing to compare with: only a proven unchanged send counts so
            journal.record_review(entry.id, "changed", sent_message_id=sent_id, source="learn")
            counts["unknown"] += 1
            continue
        ratio = similarity(drafted, text_body(message))
        verdict = "unchanged" if ratio == 1.0 else "changed"
        journal.record_review(
            entry.id, verdict, similarity=ratio, sent_message_id=sent_id, source="learn"
        )
        counts[verdict] += 1
        if verdict == "changed":
            ratios.append(ratio)
    return counts, ratios


def _cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    mailbox = _open_mailbox(settings)
    try:
        if args.setup:
            return _setup(mailbox)
        where = mailbox.subfolder(TRIAGE_FOLDER, "")
        journal = _open_journal(settings)
        try:
            corrections = Corrections(settings.training_dir)
            counts = _harvest_folders(mailbox, settings, journal, corrections)
            if not counts:
                raise ConfigError(
                    f"{mailbox.description}: no {TRIAGE_FOLDER} folders; run 'triage learn "
                    "--setup' to create them, then file misclassified messages there"
                )
            corrections.save()
            sent, ratios = _harvest_sent(mailbox, settings, journal)
        finally:
            journal.close()
    finally:
        mailbox.close()
    _report(counts, sent, ratios, corrections, where)
    return 0


def _report(
    counts: dict[str, Counter[str]],
    sent: Counter[str],
    ratios: list[float],
    corrections: Corrections,
    where: str,
) -> None:
    new = sum(c["added"] + c["replaced"] for c in counts.values())
    print(f"corrections from {where}<topic>:")
    shown = 0
    for label, found in counts.items():
        if not sum(found.values()):
            continue
        shown += 1
        phrases = (
            ("added", "new"),
            ("replaced", "relabelled"),
            ("present", "already there"),
            ("in paraphrases", "left out (the text is in the paraphrases with another topic)"),
            ("skipped", "skipped (automatic mail or no text)"),
        )
        parts = [f"{found[key]} {phrase}" for key, phrase in phrases if found[key]]
        print(f"  {label:<24}{', '.join(parts)}")
    if not shown:
        print("  none: the folders are empty")
    if new:
        print(f"{new} new in {corrections.path}; run 'triage train' to learn from them")
    else:
        print(f"nothing new for {corrections.path}")
    reviewed = sent["unchanged"] + sent["changed"] + sent["unknown"]
    line = f"Sent: {reviewed} new replies that began as our drafts"
    if reviewed:
        line += f": {sent['unchanged']} sent unchanged, {sent['changed']} changed"
        if ratios:
            line += f" (similarity {sum(ratios) / len(ratios):.2f} on average)"
        if sent["unknown"]:
            line += f", {sent['unknown']} without the draft to compare (counted as changed)"
    if sent["already"]:
        line += f"; {sent['already']} counted before"
    print(line)


def add_parsers(sub: Any) -> None:
    """Add this module's subcommands to ``triage``'s argument parser."""
    p = sub.add_parser(
        "learn",
        help="harvest staff corrections from the mailbox into training data",
        description=(
            "Read the messages staff filed in Triage/<topic> folders into corrections.csv (as "
            "classification reads them, deduplicated), and record how the replies in Sent "
            "compare with our drafts. --setup creates the folders first."
        ),
    )
    p.add_argument(
        "--setup",
        action="store_true",
        help=f"create the {TRIAGE_FOLDER}/<topic> folders (one per topic, and other) and exit",
    )
    p.set_defaults(func=_cmd_learn)


__all__ = [
    "CORRECTIONS",
    "CORRECTION_COLUMNS",
    "GATE_RULE",
    "GATE_TOLERANCE",
    "HELD_OUT_FRACTION",
    "HELD_OUT_RULE",
    "TRIAGE_FOLDER",
    "Corrections",
    "add_parsers",
    "card_entry",
    "compare",
    "drafted_text",
    "evaluate",
    "find_original",
    "gate_split",
    "held_out_emails",
    "read_as_classified",
    "render_draft",
    "similarity",
    "split",
    "text_body",
]
