"""HTML to text: triage's own converter against html2text and Beautiful Soup, on the samples.

    pip install html2text beautifulsoup4   # only for this comparison; triage needs neither
    python benchmarks/html_to_text.py

Two measures, on every sample with a text/html part:
- agreement: where a sample has a text/plain part too (multipart/alternative), the new text
  read from the converted HTML is compared with the new text read from the plain part, word
  by word (difflib's ratio over the words; 1.0 is the same words in the same order). The sender's
  own client wrote both, so the plain part is the truth the HTML should come back to;
- topics: on every HTML sample, whether the model finds the labelled topics (samples/labels.csv,
  as a set) when the text comes from each converter, even where a plain part was there.
Then the speed: microseconds per HTML body. A converter that is not installed is skipped.
"""

from __future__ import annotations

import csv
import difflib
import statistics
import sys
import time
from collections.abc import Callable
from email.message import Message
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triage import classifier  # noqa: E402
from triage.newtext import html_to_text, new_text  # noqa: E402
from triage.query import _decode_part, message_from_bytes, parse  # noqa: E402


def converters() -> dict[str, Callable[[str], str]]:
    found: dict[str, Callable[[str], str]] = {"triage": html_to_text}
    try:
        import html2text

        def with_html2text(html: str) -> str:
            h = html2text.HTML2Text()
            h.body_width = 0  # no re-wrapping
            h.ignore_images = True
            h.ignore_emphasis = True
            return str(h.handle(html))

        found["html2text"] = with_html2text
    except ImportError:
        print("html2text is not installed: skipped")
    try:
        from bs4 import BeautifulSoup

        def with_soup(html: str) -> str:
            return str(BeautifulSoup(html, "html.parser").get_text("\n"))

        found["beautifulsoup4"] = with_soup
    except ImportError:
        print("beautifulsoup4 is not installed: skipped")
    return found


def parts(message: Message) -> tuple[str | None, str | None]:
    plain = html = None
    for part in message.walk():
        if part.get_content_disposition() == "attachment":
            continue
        if part.get_content_type() == "text/plain" and plain is None:
            plain = _decode_part(part)
        elif part.get_content_type() == "text/html" and html is None:
            html = _decode_part(part)
    return plain, html


def expected(row: dict[str, str]) -> set[str]:
    """The labelled topics of a sample (none for "other")."""
    return set(row["topics"].split(";")) - {"other", ""}


def main() -> None:
    model = classifier.load(ROOT / "models" / "triage.joblib")
    with open(ROOT / "samples" / "labels.csv", newline="", encoding="utf-8") as fh:
        labels = {row["file"]: row for row in csv.DictReader(fh)}
    samples = []  # (name, query, plain part, html part)
    for path in sorted((ROOT / "samples" / "inbox").glob("*.eml")):
        raw = path.read_bytes()
        plain, html = parts(message_from_bytes(raw))
        if html is not None and labels[path.name]["kind"] != "automatic":
            samples.append((path.name, parse(raw), plain, html))
    with_plain = [s for s in samples if s[2] and s[2].strip()]
    print(
        f"{len(samples)} samples with an HTML part, {len(with_plain)} of them with a plain part too"
    )
    as_parsed = sum(set(model.classify(q).topics) == expected(labels[f]) for f, q, *_ in samples)
    print(f"topics right as triage reads them (the plain part where there is one): {as_parsed}")
    print(f"{'converter':16} {'agreement':>10} {'min':>6} {'topics right':>13} {'µs/body':>9}")
    for name, convert in converters().items():
        ratios = []
        for _, query, plain, html in with_plain:
            ours = new_text(convert(html), forwarded=query.forwarded).split()
            truth = new_text(plain or "", forwarded=query.forwarded).split()
            ratios.append(difflib.SequenceMatcher(None, ours, truth, autojunk=False).ratio())
        right = 0
        for file, query, _, html in samples:
            text = new_text(convert(html), forwarded=query.forwarded)
            topics = model.classify(query.__class__(**{**query.__dict__, "text": text})).topics
            right += set(topics) == expected(labels[file])
        started = time.perf_counter()
        rounds = 0
        while time.perf_counter() - started < 1.0:
            for *_, html in samples:
                convert(html)
            rounds += 1
        micros = (time.perf_counter() - started) / (rounds * len(samples)) * 1e6
        print(
            f"{name:16} {statistics.mean(ratios):10.3f} {min(ratios):6.2f} "
            f"{right:>6} of {len(samples):<5} {micros:9.0f}"
        )


if __name__ == "__main__":
    main()
