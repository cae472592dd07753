"""Evaluation: labelled emails -> the report (per-topic scores, reply precision, coverage).

Labels come from a CSV beside the emails (``samples/labels.csv``: file, topics, kind), topics
separated by ``;`` in the order asked, ``other``, or empty for automatic mail.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triage.classifier import Model
from triage.config import Settings
from triage.errors import SampleError
from triage.query import Query, parse
from triage.routing import Decision, Router
from triage.topics import LABELS, OTHER

KINDS = ("single", "multi", "other", "automatic")


@dataclass
class Scores:
    """Per-label precision, recall, F1 and the summary figures of one evaluation."""

    per_label: dict[str, tuple[float, float, float, int]]  # precision, recall, f1, support
    macro_f1: float
    confusions: list[tuple[str, str, int]]  # expected, predicted, count
    reply_precision: float
    coverage: float
    replied: int
    extra: dict[str, float] = field(default_factory=dict)


def score_labels(
    expected: Sequence[str], predicted: Sequence[str]
) -> tuple[dict[str, tuple[float, float, float, int]], float, list[tuple[str, str, int]]]:
    """Per-label P/R/F1 over the labels that occur, their macro-F1, and the confusion pairs."""
    labels = [label for label in LABELS if label in set(expected) | set(predicted)]
    per: dict[str, tuple[float, float, float, int]] = {}
    for label in labels:
        tp = sum(1 for e, p in zip(expected, predicted, strict=True) if e == p == label)
        fp = sum(1 for e, p in zip(expected, predicted, strict=True) if p == label != e)
        fn = sum(1 for e, p in zip(expected, predicted, strict=True) if e == label != p)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[label] = (precision, recall, f1, tp + fn)
    scored = [per[label][2] for label in labels if per[label][3] > 0]
    macro = sum(scored) / len(scored) if scored else 0.0
    pairs = Counter((e, p) for e, p in zip(expected, predicted, strict=True) if e != p)
    return per, macro, [(e, p, n) for (e, p), n in pairs.most_common()]


@dataclass(frozen=True)
class Case:
    path: Path
    topics: tuple[str, ...]  # expected, in the order asked; ("other",) or () for automatic
    kind: str


@dataclass(frozen=True)
class Result:
    case: Case
    query: Query
    decision: Decision
    label: str  # the model's top label before routing

    @property
    def predicted(self) -> str:
        """The main topic answered, "other" for a hand-off, "automatic" for ignored mail."""
        if self.decision.action == "ignore":
            return "automatic"
        return self.decision.topics[0] if self.decision.topics else OTHER

    @property
    def expected(self) -> str:
        """The expected label the prediction is scored against (any topic asked counts)."""
        if self.case.kind == "automatic":
            return "automatic"
        return self.predicted if self.predicted in self.case.topics else self.case.topics[0]


def find_labels(paths: Iterable[Path]) -> dict[Path, tuple[tuple[str, ...], str]]:
    """Labels for the given emails, from ``labels.csv`` in their directory or its parent."""
    labels: dict[Path, tuple[tuple[str, ...], str]] = {}
    for directory in {p.parent for p in paths}:
        for candidate in (directory / "labels.csv", directory.parent / "labels.csv"):
            if candidate.is_file():
                labels.update(read_labels(candidate, directory))
                break
    return labels


def read_labels(path: Path, emails: Path) -> dict[Path, tuple[tuple[str, ...], str]]:
    out: dict[Path, tuple[tuple[str, ...], str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            topics = tuple(t.strip() for t in (row.get("topics") or "").split(";") if t.strip())
            kind = (row.get("kind") or "").strip() or ("automatic" if not topics else "single")
            unknown = [t for t in topics if t not in LABELS]
            if unknown or kind not in KINDS:
                raise SampleError(
                    f"{path}:{n}: unknown topic {unknown[0]!r}; "
                    "known topics are in triage/topics.py"
                    if unknown
                    else f"{path}:{n}: unknown kind {kind!r}; one of {', '.join(KINDS)}"
                )
            out[(emails / row["file"].strip()).resolve()] = (topics, kind)
    return out


def collect(paths: Sequence[Path]) -> list[Case]:
    """Labelled cases from .eml files and directories of them."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.rglob("*.eml")))
        elif path.is_file():
            files.append(path)
        else:
            raise SampleError(f"{path}: no such file or directory")
    labels = find_labels(files)
    cases = []
    for file in files:
        found = labels.get(file.resolve())
        if found is None:
            raise SampleError(f"{file}: no label; add a row for it to labels.csv beside it")
        cases.append(Case(file, found[0], found[1]))
    if not cases:
        raise SampleError(f"no .eml files in {', '.join(map(str, paths))}")
    return cases


def run(cases: Sequence[Case], model: Model, router: Router, settings: Settings) -> list[Result]:
    queries = [parse(c.path.read_bytes(), support_address=settings.support_address) for c in cases]
    readable = [i for i, q in enumerate(queries) if not q.automatic and not q.problem]
    classified = dict(
        zip(readable, model.classify_many([queries[i] for i in readable]), strict=True)
    )
    results = []
    for i, (case, query) in enumerate(zip(cases, queries, strict=True)):
        result = classified.get(i)
        results.append(
            Result(case, query, router.route(query, result), result.label if result else "")
        )
    return results


def score(results: Sequence[Result]) -> Scores:
    """The figures of the issue's targets, over labelled emails."""
    people = [r for r in results if r.case.kind != "automatic"]
    per, macro, confusions = score_labels(
        [r.expected for r in people], [r.predicted for r in people]
    )
    answered = [r for r in people if r.decision.action in ("reply", "forward")]
    right = [r for r in answered if r.predicted in r.case.topics and r.predicted != OTHER]
    single = [r for r in people if r.case.kind == "single"]
    multi = [r for r in people if r.case.kind == "multi"]
    automatic = [r for r in results if r.case.kind == "automatic"]
    return Scores(
        per_label=per,
        macro_f1=macro,
        confusions=confusions,
        reply_precision=len(right) / len(answered) if answered else 0.0,
        coverage=(
            sum(1 for r in single if r.decision.action in ("reply", "forward")) / len(single)
            if single
            else 0.0
        ),
        replied=len(answered),
        extra={
            "multi_all_found": (
                sum(1 for r in multi if set(r.case.topics) <= set(r.decision.topics)) / len(multi)
                if multi
                else 0.0
            ),
            "automatic_ignored": (
                sum(1 for r in automatic if r.decision.action == "ignore") / len(automatic)
                if automatic
                else 0.0
            ),
            "people_ignored": float(sum(1 for r in people if r.decision.action == "ignore")),
            "emails": float(len(results)),
        },
    )


def report_lines(scores: Scores, *, title: str) -> list[str]:
    """The evaluation report as text, the same for ``train`` and ``evaluate``."""
    lines = [title, "", f"{'label':<24}{'precision':>10}{'recall':>9}{'f1':>7}{'n':>6}"]
    for label, (p, r, f, n) in scores.per_label.items():
        lines.append(f"{label:<24}{p:>10.2f}{r:>9.2f}{f:>7.2f}{n:>6}")
    lines.append("")
    lines.append(f"macro-F1            {scores.macro_f1:.3f}")
    lines.append(f"reply precision     {scores.reply_precision:.3f}  ({scores.replied} answered)")
    lines.append(f"coverage            {scores.coverage:.3f}")
    for name, value in scores.extra.items():
        shown = (
            f"{value:.3f}" if value < 1 or name.startswith(("multi", "automatic")) else f"{value:g}"
        )
        lines.append(f"{name.replace('_', ' '):<20}{shown}")
    if scores.confusions:
        lines.append("")
        lines.append("most confused (expected -> predicted):")
        for expected, predicted, count in scores.confusions[:10]:
            lines.append(f"  {expected} -> {predicted}: {count}")
    return lines


__all__ = [
    "KINDS",
    "Case",
    "Result",
    "Scores",
    "collect",
    "find_labels",
    "read_labels",
    "report_lines",
    "run",
    "score",
    "score_labels",
]
