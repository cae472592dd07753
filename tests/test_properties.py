"""Property-based tests (hypothesis) and a corpus of malformed mail: the parser, the stripper
and the composer never crash, never let a sender's text become a header, and always answer."""

import email
from email.policy import default

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triage import classifier
from triage.config import load_settings
from triage.newtext import html_to_text, new_text
from triage.query import message_from_bytes, parse
from triage.reply import Composer, clean_header, greeting, reply_subject
from triage.routing import Decision

COMPOSER = Composer(load_settings(_env_file=None, replies_dir=ROOT / "replies"))
MODEL = classifier.load(ROOT / "models" / "triage.joblib")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=3000))
def test_parse_never_raises_on_bytes(raw):
    query = parse(raw)
    assert isinstance(query.text, str)


@FAST
@given(st.text(max_size=3000))
def test_new_text_is_a_part_of_what_was_written(body):
    out = new_text(body)
    assert isinstance(out, str)
    assert len(out) <= len(body) + 2


@FAST
@given(st.text(max_size=2000))
def test_html_to_text_never_raises(html):
    assert isinstance(html_to_text(f"<div>{html}</div>"), str)


@FAST
@given(name=st.text(max_size=80), subject=st.text(max_size=200), body=st.text(max_size=500))
def test_composer_headers_cannot_be_injected(name, subject, body):
    raw = (f"From: {clean_header(name)} <a@school.example.org>\r\nSubject: {clean_header(subject)}\r\n"
           f"Message-ID: <p@x>\r\n\r\n{body}\r\n").encode("utf-8", "surrogatepass")
    query = parse(raw)
    if not query.sender_address:
        return  # handed to a person, never composed
    message = COMPOSER.render(Decision("reply", ("events",), "t", 0.9), query).reply
    parsed = email.message_from_bytes(message.as_bytes(), policy=default)
    assert parsed["Subject"].startswith("Re: ")
    assert parsed["Subject"].count("\n") == 0
    assert set(parsed.keys()) == set(message.keys())  # nothing new appeared in transit
    assert len(parsed.get_all("To")) == 1


@FAST
@given(st.text(max_size=60))
def test_greeting_and_subject_are_one_line(text):
    assert "\n" not in greeting(text) and greeting(text).endswith(",")
    subject = reply_subject(text)
    assert subject.startswith("Re: ") and "\n" not in subject and not subject[4:].lower().startswith("re:")


def _mail(headers, body=b"How do I match mentors on Steplab?\r\n"):
    return headers.encode() + b"\r\n" + body


MALFORMED = {
    "broken-boundary": _mail('From: a@b.org\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary="zz"\r\n',
                             b"--yy\r\nContent-Type: text/plain\r\n\r\nhello\r\n--yy--\r\n"),
    "no-from": _mail("Subject: hello\r\n"),
    "no-date-no-id": _mail("From: a@b.org\r\nSubject: hello\r\n"),
    "unknown-charset": _mail("From: a@b.org\r\nSubject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n"),
    "lying-charset": _mail("From: a@b.org\r\nSubject: x\r\nContent-Type: text/plain; charset=us-ascii\r\n",
                           "Caf\u00e9 \u00a3100".encode("utf-8")),
    "undeclared-8bit": _mail("From: a@b.org\r\nSubject: x\r\n", b"\xe9t\xe9 \xff\xfe\r\n"),
    "broken-base64": _mail("From: a@b.org\r\nSubject: x\r\nContent-Transfer-Encoding: base64\r\n", b"!!!not base64$$$\r\n"),
    "broken-qp": _mail("From: a@b.org\r\nSubject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n", b"=ZZ=\r\n=4"),
    "huge-header": _mail("From: a@b.org\r\nSubject: " + "x" * 1_000_000 + "\r\n"),
    "deep-nesting": _mail("From: a@b.org\r\nSubject: x\r\n" + 'Content-Type: multipart/mixed; boundary="b0"\r\n',
                          b"".join(f'--b{i}\r\nContent-Type: multipart/mixed; boundary="b{i + 1}"\r\n\r\n'.encode()
                                   for i in range(100)) + b"--b100\r\nContent-Type: text/plain\r\n\r\nhi\r\n"),
    "empty-body": _mail("From: a@b.org\r\nSubject: x\r\n", b""),
    "binary-garbage": bytes(range(256)) * 40,
    "big-attachment": _mail('From: a@b.org\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary="q"\r\n',
                            b"--q\r\nContent-Type: text/plain\r\n\r\nSee attached\r\n--q\r\nContent-Type: application/pdf\r\n"
                            b"Content-Transfer-Encoding: base64\r\n\r\n" + b"QUJD" * 7_500_000 + b"\r\n--q--\r\n"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_mail_is_handled_or_handed_off(name, model):
    from triage.routing import Router

    router = Router.from_settings(load_settings(_env_file=None, replies_dir=ROOT / "replies"))
    query = parse(MALFORMED[name])
    result = None if (query.automatic or query.problem) else model.classify(query)
    decision = router.route(query, result)
    assert decision.action in ("reply", "human", "ignore")
    assert decision.reason
    if query.problem:
        assert decision.action == "human"


def test_the_worker_never_stops_on_malformed_mail(workdir, capsys):
    """Every message of the malformed corpus goes through `triage run --once` on the local
    Maildir: each gets a finished journal row with a reason, and the run ends normally."""
    import sqlite3

    from triage.cli import main
    from triage.maildir import LocalMailbox

    mailbox = LocalMailbox(workdir / "mail")
    for raw in MALFORMED.values():
        mailbox.add(raw)
    mailbox.close()
    assert main(["run", "--once"]) == 0
    assert f"{len(MALFORMED)} new messages handled" in capsys.readouterr().out
    db = sqlite3.connect(workdir / "triage.sqlite3")
    rows = db.execute("SELECT status, action, reason FROM messages").fetchall()
    db.close()
    assert len(rows) == len(MALFORMED)
    assert all(status == "done" and reason for status, _, reason in rows)
    assert {action for _, action, _ in rows} <= {"reply", "human", "ignore"}


def _reference_features(scorer, text):
    """scikit-learn's own algorithm, string by string: CountVectorizer's word 1-2-grams and
    "char_wb" n-grams (each whitespace-split word padded with one space), known ones only."""
    prepared = classifier.prepare(text)
    words = classifier.word_features(prepared)
    grams = []
    for word in prepared.split():
        padded = f" {word} "
        if len(padded) < classifier.CHAR_N:
            grams.append(padded)
        grams.extend(padded[i : i + classifier.CHAR_N] for i in range(len(padded) - classifier.CHAR_N + 1))
    found = [scorer.word_vocab[w] for w in words if w in scorer.word_vocab]
    found += [len(scorer.word_vocab) + scorer.char_vocab[g] for g in grams if g in scorer.char_vocab]
    return sorted(found)


# Text made of the vocabulary's own pieces, so that features are found, with odd characters,
# separators and spacing between them.
_PIECES = st.sampled_from(
    ["step lab", "StepLab", "my ect", "NQT", "e-mail", "s.41", "induction", "mentor", "a", "I",
     "can't", "don't-", "'quoted'", "x", "é", "£", "--", " ", "  ", "\n", "\t", "\x00", ".", "?",
     "appropriate body", "delivery partners", "training", "ECT's", "2024", "_", "\u2019", "\u00bd", "\udcff",
     "na\u00efve", "\u0663", "\u00a0", "\u2028", "\u3000", "\x1c", "\r\n", "\x0b", "\u200b"]
)


@FAST
@given(st.lists(st.lists(_PIECES | st.text(max_size=6), max_size=25).map("".join), min_size=1, max_size=6))
def test_batched_features_are_sklearns_text_by_text(texts):
    scorer = MODEL.scorer
    rows, ids = scorer.features(texts)
    for i, text in enumerate(texts):
        assert sorted(ids[rows == i].tolist()) == _reference_features(scorer, text)


_WORDS = st.lists(
    st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=12), min_size=1, max_size=30
)


@given(_WORDS)
def test_a_word_hashes_alike_wherever_it_stands(words):
    # Now and then a batch this long grows the cached powers of the base.
    points = np.frombuffer("\x00".join(words).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.array([len(w) for w in words])
    starts = np.r_[0, np.cumsum(lengths + 1)[:-1]]
    hashes = classifier._span_hashes(points, starts, starts + lengths)
    assert hashes.tolist() == classifier._word_hashes(words).tolist()
    assert hashes.tolist() == [classifier._word_hashes([w])[0] for w in words]
    by_word = dict(zip(words, hashes.tolist(), strict=True))
    assert len(set(by_word.values())) == len(by_word)  # different words, different hashes


def test_key_table_finds_every_key_and_nothing_else():
    keys = np.unique(np.random.default_rng(7).integers(1, 2**63, size=5000, dtype=np.uint64))
    table = classifier.KeyTable(keys, np.arange(len(keys)))
    assert table.find(keys).tolist() == list(range(len(keys)))
    assert (table.find(keys + np.uint64(1))[~np.isin(keys + np.uint64(1), keys)] == -1).all()
    assert table._probes > 1  # some keys collided and were found further along
    with pytest.raises(ValueError, match="may not be 0"):
        classifier.KeyTable(np.array([0, 1], dtype=np.uint64), np.arange(2))


def _same_message(raw):
    """The fast reader gives the stdlib parser's Message: headers, structure, body."""
    assert _tree(message_from_bytes(raw)) == _tree(email.message_from_bytes(raw))


def _tree(message):
    payload = message.get_payload()
    return (
        message.items(),
        message.get_content_type(),
        [_tree(part) for part in payload] if message.is_multipart() else payload,
        message.preamble,
        message.epilogue,
        [type(defect).__name__ for defect in message.defects],
    )


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_fast_reader_reads_every_sample_as_the_stdlib_does(newline):
    for path in sorted((ROOT / "samples" / "inbox").glob("*.eml")):
        _same_message(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", newline))
    for raw in MALFORMED.values():
        _same_message(raw)


_HEADER_LINE = st.sampled_from(
    ["Subject: hi", "From: A <a@b.example>", "X-Y:", " folded", "\tfolded", "From nobody", "no colon",
     ": empty name", "Content-Type: text/html; charset=utf-8", "Content-Type: multipart/mixed; boundary=b",
     "Content-Type: message/rfc822", "Caf\u00e9: x", "Subject: caf\u00e9", "Bad Name: x", "A:b:c", ""]
)


@FAST
@given(
    st.lists(_HEADER_LINE, max_size=8),
    st.sampled_from(["\r\n", "\n", "\r"]),
    st.text(max_size=200),
)
def test_fast_reader_matches_the_stdlib_on_odd_headers(lines, newline, body):
    _same_message((newline.join(lines) + newline + newline + body).encode("utf-8", "surrogateescape"))


_TEXT_LINE = st.sampled_from(["hello", "", "--bx", "--b--x", " --b", "--c", "--", "caf\u00e9", "X: y", "> quoted"])
_PART_HEADER = st.sampled_from(
    ["Content-Type: text/html", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64",
     "Content-Disposition: attachment", "X-Folded: a", " folded", "Content-Type: text/plain", "Content-Id: <1>",
     "Content-Type: multipart/alternative; boundary=c",
     "Content-Type: message/rfc822", "\u00e9: x", "broken line"]
)
_PART = st.tuples(st.lists(_PART_HEADER, max_size=2), st.lists(_TEXT_LINE, max_size=4))


@FAST
@given(
    st.sampled_from(["multipart/mixed; boundary=b", 'multipart/alternative; boundary="b"'] * 3
                    + ["multipart/digest; boundary=b", "multipart/mixed",
                       "multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64"]),
    st.lists(_TEXT_LINE, max_size=3),
    st.lists(_PART, max_size=4),
    st.sampled_from(["--b", "--b  "]),
    st.sampled_from(["--b--", "--b--", "--b-- \t", None]),
    st.lists(_TEXT_LINE, max_size=3),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
)
def test_fast_reader_matches_the_stdlib_on_multipart(
    content_type, preamble, parts, opening, closing, epilogue, newline, final_newline
):
    lines = list(preamble)
    for headers, body in parts:
        lines += [opening, *headers, "", *body]
    if closing:
        lines += [closing, *epilogue]
    text = newline.join(lines) + (newline if final_newline else "")
    head = f"From: a@b.example{newline}Content-Type: {content_type.replace(chr(13) + chr(10), newline)}{newline}"
    _same_message((head + newline + text).encode("utf-8"))
