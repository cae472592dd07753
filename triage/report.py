"""Evaluation report as one self-contained HTML page (``triage evaluate --html FILE``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from triage.classifier import Model
from triage.errors import TriageError
from triage.evaluation import Result, Scores
from triage.topics import LABELS


def _heat(count: int, diagonal: bool) -> str:
    """A cell colour: green on the diagonal, red off it, stronger with more emails."""
    if not count:
        return "#fff"
    strength = min(1.0, 0.25 + count / 8)
    return (
        f"rgba(60, 160, 90, {strength:.2f})" if diagonal else f"rgba(210, 70, 60, {strength:.2f})"
    )


def render_html(
    results: Sequence[Result], scores: Scores, model: Model, *, title: str, model_path: str
) -> str:
    env = Environment(
        loader=PackageLoader("triage", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    matrix = Counter((r.expected, r.predicted) for r in results)
    used = {label for pair in matrix for label in pair}
    matrix_labels = [label for label in (*LABELS, "automatic") if label in used]
    wrong = [
        {
            "name": r.case.path.name,
            "expected": ";".join(r.case.topics) or "automatic",
            "predicted": r.predicted,
            "reason": r.decision.reason,
            "terms": model.explain(r.query.text, r.label) if r.label else (),
            "text": r.query.text,
        }
        for r in results
        if r.predicted != r.expected
    ]
    return env.get_template("report.html.j2").render(
        title=title,
        model_path=model_path,
        trained_at=model.card.get("trained_at", "unknown"),
        threshold=model.threshold,
        margin=model.margin,
        results=results,
        scores=scores,
        matrix=matrix,
        matrix_labels=matrix_labels,
        heat=_heat,
        wrong=wrong,
    )


def write_html(
    path: Path,
    results: Sequence[Result],
    scores: Scores,
    model: Model,
    *,
    title: str = "",
    model_path: str = "",
) -> None:
    """Write the report page; a path that cannot be written is a TriageError."""
    page = render_html(results, scores, model, title=title or str(path), model_path=model_path)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise TriageError(f"{path}: cannot write the report ({exc.strerror})") from exc


__all__ = ["render_html", "write_html"]
