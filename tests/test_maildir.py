"""The local Maildir mailbox: keys, fetch, drafts, flags and moves, never changing a message."""

from email.message import EmailMessage

import pytest

from triage.mailbox import SOURCE_HEADER, Mailbox
from triage.maildir import LocalMailbox

RAW = b"From: a@b.org\r\nSubject: hi\r\nMessage-ID: <1@b.org>\r\n\r\nHello\r\n"


@pytest.fixture
def box(tmp_path):
    mailbox = LocalMailbox(tmp_path / "mail")
    yield mailbox
    mailbox.close()


def test_is_a_mailbox(box):
    assert isinstance(box, Mailbox)
    assert (box.root / "new").is_dir() and (box.root / "cur").is_dir()


def test_keys_and_fetch_leave_the_message_as_it_is(box):
    first = box.add(RAW)
    second = box.add(RAW.replace(b"<1@", b"<2@"))
    _uidvalidity, keys = box.keys()
    assert keys == [first, second]
    fetched = list(box.fetch(keys))
    assert [m.raw for m in fetched] == [RAW, RAW.replace(b"<1@", b"<2@")]
    assert list((box.root / "new").iterdir())  # still unread in new/


def test_drafts_are_maildir_plus_plus_and_findable(box):
    draft = EmailMessage()
    draft["Subject"] = "Re: hi"
    draft[SOURCE_HEADER] = "<1@b.org>"
    draft.set_content("answer")
    where = box.save_draft(draft)
    assert "/.Drafts/cur/" in where and where.endswith(":2,DS")
    assert (box.root / ".Drafts" / "maildirfolder").exists()
    assert box.find_draft("<1@b.org>")
    assert not box.find_draft("<2@b.org>")


def test_flag_and_move_rename_only(box):
    key = box.add(RAW)
    incoming = next(box.fetch([key]))
    box.mark(incoming, ["$Triaged"], flagged=True)
    flagged = list((box.root / "cur").iterdir())
    assert len(flagged) == 1 and flagged[0].name.endswith(":2,F")
    assert flagged[0].read_bytes() == RAW
    box.move(incoming, "Humans")
    moved = list((box.root / ".Humans" / "cur").iterdir())
    assert len(moved) == 1 and moved[0].read_bytes() == RAW
    assert box.keys()[1] == []


def test_wait_returns_early_on_new_mail(box, tmp_path):
    import threading
    import time

    timer = threading.Timer(0.3, lambda: LocalMailbox(tmp_path / "mail").add(RAW))
    timer.start()
    started = time.monotonic()
    box.wait(30)
    timer.join()
    assert time.monotonic() - started < 15  # woken by the mail, not the 30 s timeout
