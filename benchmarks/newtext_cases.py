"""Other reply parsers' test cases: how many each parser passes, and how fast it reads.

    python benchmarks/newtext_cases.py [--seconds 1.0] [--failures]

A case is tests/data/reply_parsers/<name>.txt with <name>.expected.txt; it passes when the
parser's output equals the expected text after whitespace is normalised. Counted for
triage.newtext.new_text, email_reply_parser.EmailReplyParser.parse_reply and mail-parser-reply
(each when importable), on all cases and on the cases whose expected text is the source
project's own (README.md, column "expected": "theirs"). Then the speed: bodies/s over the case
bodies, and microseconds per call on a typical 2 KB support email (plain and HTML).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triage.newtext import html_to_text, new_text  # noqa: E402

CASES_DIR = ROOT / "tests" / "data" / "reply_parsers"
# A row of README.md's case table: | `name` | from | expected | note |
README_ROW_RE = re.compile(r"^\|\s*`(?P<name>[\w-]+)`\s*\|[^|]*\|\s*(?P<expected>\w+)\s*\|")

# A typical support email: a question, a sign-off block, a disclaimer and an Outlook thread.
TYPICAL = (
    "Hi team,\n\nI am the induction tutor at Oakfield Primary. Our ECT, Sam Green, started in "
    "September but she still does not appear on Steplab, and her mentor cannot see her either."
    "\nWe registered her on the DfE service on 4 September and the lead provider confirmed it."
    " Could you check what is missing? Her TRN is 1234567.\n\nKind regards,\n\nPriya Patel\n"
    "Induction Tutor | Oakfield Primary School\nOakfield Road, Leeds LS1 2AB\nTel: 0113 496 0000"
    "\n\nThis email and any attachments are confidential and intended solely for the addressee. "
    "If you have received it in error please notify the sender and delete it.\n\n"
    "From: ECT Support <support@ect.example.org>\nSent: 03 September 2024 09:12\n"
    "To: Priya Patel <p.patel@oakfield.example.sch.uk>\nSubject: RE: Registration\n\n"
    "Dear Priya,\n\nThank you for your email. Once your ECT is registered with the DfE and the "
    "lead provider has confirmed the registration, she will appear on Steplab within five "
    "working days. Her mentor will be matched by the lead provider.\n\nIf she does not appear "
    "after that, please reply with her TRN and start date.\n\nKind regards,\nECT Support Team\n\n"
    "> -----Original Message-----\n> From: Priya Patel\n> Sent: 02 September 2024 16:40\n"
    "> Subject: Registration\n>\n> Hello, how long after registration will our ECT appear on "
    "Steplab?\n> Thanks, Priya\n" * 2
)
TYPICAL_HTML = (
    "<html><head><style>p{margin:0}</style></head><body>"
    + "".join(f"<p>{line or '&nbsp;'}</p>" for line in TYPICAL.split("\n")[:14])
    + '<div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> ECT Support'
    "<br><b>Sent:</b> 03 September 2024 09:12<br><b>To:</b> Priya<br><b>Subject:</b> RE: x"
    "</div>" + "".join(f"<div>{line}</div>" for line in TYPICAL.split("\n")[20:]) + "</body></html>"
)


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def load_cases() -> tuple[list[tuple[str, str, str]], set[str]]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.txt")):
        if path.name.endswith(".expected.txt"):
            continue
        with path.open(encoding="utf-8", newline="") as f:
            body = f.read()
        expected = path.with_name(path.stem + ".expected.txt").read_text(encoding="utf-8")
        cases.append((path.stem, body, expected))
    theirs = set()
    for line in (CASES_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        m = README_ROW_RE.match(line)
        if m and m.group("expected") == "theirs":
            theirs.add(m.group("name"))
    return cases, theirs


def parsers() -> dict[str, Callable[[str], str | None]]:
    found: dict[str, Callable[[str], str | None]] = {"triage.newtext.new_text": new_text}
    try:
        from email_reply_parser import EmailReplyParser
    except ImportError:
        print("email_reply_parser: not installed (pip install email-reply-parser)")
    else:
        found["email_reply_parser.parse_reply"] = EmailReplyParser.parse_reply
    try:
        from mailparser_reply import EmailReplyParser as MailParserReply
        from mailparser_reply.constants import MAIL_LANGUAGES
    except ImportError:
        print("mail-parser-reply: not installed (pip install mail-parser-reply)")
    else:
        languages = [lang for lang in MAIL_LANGUAGES if lang != "david"]  # "david": a test stub
        found[f"mail-parser-reply ({len(languages)} languages)"] = MailParserReply(
            languages=languages
        ).parse_reply
    return found


def rate(fn: Callable[[str], object], bodies: list[str], seconds: float) -> float:
    """Calls per second of ``fn`` over ``bodies``, repeated for about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    while True:
        for body in bodies:
            fn(body)
        calls += len(bodies)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per speed measurement")
    ap.add_argument("--failures", action="store_true", help="list each parser's failing cases")
    args = ap.parse_args(argv)

    cases, theirs = load_cases()
    bodies = [body for _, body, _ in cases]
    print(f"{len(cases)} cases in {CASES_DIR.relative_to(ROOT)} ({len(theirs)} with the source")
    print("project's own expected text); pass = equal after whitespace is normalised\n")
    print(f"{'parser':44} {'all':>9} {'theirs':>9} {'bodies/s':>10}")
    for name, fn in parsers().items():
        failing = []
        for case, body, expected in cases:
            try:
                got = fn(body)
            except Exception as exc:  # a parser that crashes fails the case
                got = f"<{type(exc).__name__}>"
            if _norm(got) != _norm(expected):
                failing.append(case)
        ok = len(cases) - len(failing)
        ok_theirs = len(theirs) - len(theirs.intersection(failing))
        speed = rate(fn, bodies, args.seconds)
        print(f"{name:44} {ok:>3}/{len(cases):<5} {ok_theirs:>3}/{len(theirs):<5} {speed:>10,.0f}")
        if args.failures and failing:
            print("    failing: " + ", ".join(failing))

    print(f"\ntypical support email: {len(TYPICAL):,} chars plain, {len(TYPICAL_HTML):,} HTML")
    for label, fn, body in (
        ("new_text(plain)", new_text, TYPICAL),
        ("html_to_text(html)", html_to_text, TYPICAL_HTML),
        ("new_text(html_to_text(html))", lambda b: new_text(html_to_text(b)), TYPICAL_HTML),
    ):
        per_s = rate(fn, [body], args.seconds)
        print(f"  {label:32} {1e6 / per_s:8.1f} µs/call  {per_s:>10,.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
