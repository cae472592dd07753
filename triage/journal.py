"""Journal: every outcome -> one SQLite row, so that each message is handled exactly once.

The intent is written before acting (status ``pending``) and the outcome after (``done`` or
``failed``). ``UNIQUE(folder, uidvalidity, uid)`` makes a rerun a no-op; the Message-ID index
keeps a UIDVALIDITY change from handling old mail again. Schema version lives in
``PRAGMA user_version``, changed only by the ordered migrations below.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from triage.errors import ConfigError, TriageError


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one (executescript would commit the migration's transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            folder TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            uid TEXT NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            sender TEXT NOT NULL DEFAULT '',
            subject TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,               -- pending | done | failed
            action TEXT NOT NULL DEFAULT '',    -- reply | forward | human | ignore
            topics TEXT NOT NULL DEFAULT '',    -- comma-separated topic ids
            confidence REAL NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL DEFAULT '',   -- where the draft or forward went
            error TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (folder, uidvalidity, uid)
        );
        CREATE INDEX messages_message_id ON messages (message_id);
        CREATE INDEX messages_created_at ON messages (created_at);
        CREATE TABLE sends (
            id INTEGER PRIMARY KEY,
            address TEXT NOT NULL,
            topic TEXT NOT NULL,
            sent_at TEXT NOT NULL
        );
        CREATE INDEX sends_address ON sends (address, topic, sent_at);
        """,
    )


def _v2(db: sqlite3.Connection) -> None:
    """The outbox queue: mail to send (forwards, replies in send mode), kept until it is sent."""
    _script(
        db,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            entry_id INTEGER,                   -- messages.id of the original it belongs to
            kind TEXT NOT NULL,                 -- "forward to <party>" or "reply"
            recipient TEXT NOT NULL,            -- the To address, for people
            message_id TEXT NOT NULL UNIQUE,    -- sent unchanged on every attempt
            raw BLOB NOT NULL,                  -- the message exactly as it is sent
            folder TEXT NOT NULL DEFAULT '',    -- where the original is (for a hand-off)
            uidvalidity INTEGER NOT NULL DEFAULT 0,
            uid TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,               -- queued | sending | sent | refused
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,  -- unix time of the next try
            last_error TEXT NOT NULL DEFAULT '',
            copied INTEGER NOT NULL DEFAULT 0,  -- Sent copy: 0 not yet, -1 started, 1 done
            handed_off INTEGER NOT NULL DEFAULT 0,  -- refused: the original was flagged
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT NOT NULL DEFAULT '',
            UNIQUE (entry_id, kind, recipient)
        );
        CREATE INDEX outbox_due ON outbox (status, next_attempt_at)
        """,
    )


def _v3(db: sqlite3.Connection) -> None:
    """Staff review: what became of each draft (reviews), and the text of each draft as written
    (drafts), so that what staff sent can be compared with what we drafted."""
    _script(
        db,
        """
        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY,
            entry_id INTEGER NOT NULL,          -- messages.id of the original
            verdict TEXT NOT NULL,              -- unchanged | changed | discarded | corrected
            model_topics TEXT NOT NULL DEFAULT '',  -- what the model drafted for (first review's)
            topics TEXT NOT NULL DEFAULT '',    -- corrected: the right topics, comma-separated
            similarity REAL,                    -- sent text vs draft text, 0..1, NULL: unknown
            sent_message_id TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '',    -- approve | correct | discard | learn
            created_at TEXT NOT NULL,
            UNIQUE (entry_id, verdict, sent_message_id)
        );
        CREATE INDEX reviews_entry ON reviews (entry_id);
        CREATE TABLE drafts (
            id INTEGER PRIMARY KEY,
            entry_id INTEGER,                   -- messages.id of the original, when known
            source_id TEXT NOT NULL,            -- the original's Message-ID (X-Triage-Source)
            message_id TEXT NOT NULL DEFAULT '',  -- the draft's own Message-ID
            topics TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL,                 -- the draft's text body as it was written
            created_at TEXT NOT NULL
        );
        CREATE INDEX drafts_source ON drafts (source_id)
        """,
    )


# Ordered migrations: the schema is at version N once the first N have run.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3)

# Outbox queue statuses: "sending" is written before the SMTP transaction and "sent" after it,
# so a row found in "sending" after a restart has an unknown outcome and is sent again.
QUEUE_STATUSES = ("queued", "sending", "sent", "refused")

STATUSES = ("pending", "done", "failed")

# The next step when the journal cannot be opened or written (full disk, read-only directory).
_CHECK = "that its directory is writable and that its disk has free space"

# What staff did with a draft, from best to worst: sent as drafted, sent after editing it,
# thrown away, or relabelled. An entry's verdict is the worst one recorded for it.
VERDICTS = ("unchanged", "changed", "discarded", "corrected")


@dataclass(frozen=True)
class Entry:
    """One journalled message, as ``triage review`` shows it."""

    id: int
    folder: str
    uidvalidity: int
    uid: str
    message_id: str
    sender: str
    subject: str
    status: str
    action: str
    topics: tuple[str, ...]
    confidence: float
    reason: str
    outcome: str
    error: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Review:
    """One thing staff did with an entry's draft (``triage review``, ``triage learn``)."""

    id: int
    entry_id: int
    verdict: str
    model_topics: tuple[str, ...]
    topics: tuple[str, ...]
    similarity: float | None
    sent_message_id: str
    source: str
    created_at: str


@dataclass(frozen=True)
class QueuedMail:
    """One message in the outbox queue."""

    id: int
    entry_id: int | None
    kind: str
    recipient: str
    message_id: str
    raw: bytes
    folder: str
    uidvalidity: int
    uid: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str
    copied: int
    handed_off: bool
    created_at: str
    updated_at: str
    sent_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Journal:
    """The SQLite journal at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """Open (creating and migrating) the journal; ``readonly`` opens an existing one as it is,
        or an empty one in memory when there is none (``--dry-run`` writes nothing)."""
        self.path = Path(path)
        try:
            if readonly:
                target = f"file:{self.path}?mode=ro" if self.path.exists() else ":memory:"
                self.db = sqlite3.connect(target, uri=True, isolation_level=None, timeout=30)
                self.db.row_factory = sqlite3.Row
                if target == ":memory:":
                    self._migrate()
                return
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"{self.path}: cannot open the journal ({_reason(exc, self.path)}); check "
                f"TRIAGE_STATE_DB, {_CHECK}"
            ) from exc

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ConfigError(
                f"{self.path}: journal schema {version} is newer than this triage "
                f"({len(MIGRATIONS)}); upgrade triage"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                migration(self.db)
                self.db.execute(f"PRAGMA user_version = {number:d}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> _Written:
        """Run one writing statement to its end, inside the error wrapper: a statement with
        RETURNING writes, and commits, only as its rows are read, so a full disk shows there."""
        try:
            cursor = self.db.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.OperationalError as exc:  # disk full, read-only, locked, I/O error
            raise TriageError(
                f"{self.path}: cannot write the journal ({exc}); check {_CHECK}, then run triage "
                "again (a message whose outcome is not journalled is looked at again)"
            ) from exc
        return _Written(rows, cursor.rowcount)

    # --- what is new
    def handled(self, folder: str, uidvalidity: int, uids: Iterable[str]) -> set[str]:
        """Of ``uids``, those the journal already finished (done or failed)."""
        rows = self.db.execute(
            "SELECT uid FROM messages WHERE folder = ? AND uidvalidity = ? AND status != 'pending'",
            (folder, uidvalidity),
        )
        finished = {str(r[0]) for r in rows}
        return {uid for uid in uids if uid in finished}

    def find(self, folder: str, uidvalidity: int, uid: str) -> Entry | None:
        row = self.db.execute(
            "SELECT * FROM messages WHERE folder = ? AND uidvalidity = ? AND uid = ?",
            (folder, uidvalidity, uid),
        ).fetchone()
        return _entry(row) if row else None

    def by_message_id(self, message_id: str) -> Entry | None:
        """A finished entry for this Message-ID in any folder or UIDVALIDITY, if any."""
        if not message_id:
            return None
        row = self.db.execute(
            "SELECT * FROM messages WHERE message_id = ? AND status != 'pending' "
            "ORDER BY id LIMIT 1",
            (message_id,),
        ).fetchone()
        return _entry(row) if row else None

    # --- intent and outcome
    def begin(
        self,
        folder: str,
        uidvalidity: int,
        uid: str,
        *,
        message_id: str = "",
        sender: str = "",
        subject: str = "",
        action: str = "",
        topics: Iterable[str] = (),
        confidence: float = 0.0,
        reason: str = "",
    ) -> int:
        """Record the intent before acting; returns the row id (a pending row is reused)."""
        now = _now()
        written = self._write(
            """
            INSERT INTO messages (folder, uidvalidity, uid, message_id, sender, subject, status,
                                  action, topics, confidence, reason, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)
            ON CONFLICT (folder, uidvalidity, uid) DO UPDATE SET
                message_id = excluded.message_id, sender = excluded.sender,
                subject = excluded.subject, action = excluded.action, topics = excluded.topics,
                confidence = excluded.confidence, reason = excluded.reason,
                updated_at = excluded.updated_at
            WHERE status = 'pending'
            RETURNING id
            """,
            (
                folder,
                uidvalidity,
                uid,
                message_id,
                sender[:200],
                subject[:300],
                action,
                ",".join(topics),
                confidence,
                reason,
                now,
                now,
            ),
        )
        if not written.rows:
            raise TriageError(f"journal: message {folder}/{uidvalidity}/{uid} is already finished")
        return int(written.rows[0][0])

    def finish(
        self, entry_id: int, *, status: str = "done", outcome: str = "", error: str = ""
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._write(
            "UPDATE messages SET status = ?, outcome = ?, error = ?, updated_at = ? WHERE id = ?",
            (status, outcome, error[:2000], _now(), entry_id),
        )

    def update(self, entry_id: int, **fields: object) -> None:
        """Change some columns of an entry (review: a correction, an approval)."""
        allowed = {"status", "action", "topics", "confidence", "reason", "outcome", "error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._write(
            f"UPDATE messages SET {columns}, updated_at = ? WHERE id = ?",  # names from `allowed`
            (*fields.values(), _now(), entry_id),
        )

    # --- automatic sending: RFC 3834 manners
    def record_send(self, address: str, topic: str) -> None:
        self._write(
            "INSERT INTO sends (address, topic, sent_at) VALUES (?, ?, ?)",
            (address.lower(), topic, _now()),
        )

    def sent_recently(self, address: str, topic: str, days: float) -> bool:
        if days <= 0:  # no interval: every message may have its automatic reply
            return False
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
        row = self.db.execute(
            "SELECT 1 FROM sends WHERE address = ? AND topic = ? AND sent_at >= ? LIMIT 1",
            (address.lower(), topic, since),
        ).fetchone()
        return row is not None

    def sends_since(self, minutes: float) -> int:
        since = (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="seconds")
        row = self.db.execute("SELECT COUNT(*) FROM sends WHERE sent_at >= ?", (since,)).fetchone()
        return int(row[0])

    # --- the outbox queue: mail waits here until the SMTP server takes it
    def enqueue(
        self,
        *,
        entry_id: int | None,
        kind: str,
        recipient: str,
        message_id: str,
        raw: bytes,
        folder: str = "",
        uidvalidity: int = 0,
        uid: str = "",
    ) -> QueuedMail:
        """Queue a message; for an entry that already queued this kind to this recipient (a
        retry after a crash), the row already there, whatever became of it."""
        now = _now()
        self._write(
            """
            INSERT INTO outbox (entry_id, kind, recipient, message_id, raw, folder, uidvalidity,
                                uid, status, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)
            ON CONFLICT DO NOTHING
            """,
            (entry_id, kind, recipient, message_id, raw, folder, uidvalidity, uid, now, now),
        )
        if entry_id is None:
            row = self.db.execute(
                "SELECT * FROM outbox WHERE message_id = ?", (message_id,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM outbox WHERE entry_id = ? AND kind = ? AND recipient = ?",
                (entry_id, kind, recipient),
            ).fetchone()
        if row is None:
            raise TriageError(f"journal: message {message_id} could not be queued")
        return _queued(row)

    def queue_get(self, queue_id: int) -> QueuedMail | None:
        row = self.db.execute("SELECT * FROM outbox WHERE id = ?", (queue_id,)).fetchone()
        return _queued(row) if row else None

    def queue_due(self, now: float) -> list[QueuedMail]:
        """Queued rows whose next try is due, and rows left ``sending`` (outcome unknown)."""
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE status IN ('queued', 'sending') AND next_attempt_at <= ? "
            "ORDER BY id",
            (now,),
        )
        return [_queued(r) for r in rows]

    def queue_next_due(self) -> float | None:
        """When the earliest queued row is due (unix time), or None when nothing waits."""
        row = self.db.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('queued', 'sending')"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def queue_unfinished(self) -> list[QueuedMail]:
        """Sent rows still without their Sent copy, and refused rows not yet handed off."""
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE (status = 'sent' AND copied != 1) "
            "OR (status = 'refused' AND handed_off = 0) ORDER BY id"
        )
        return [_queued(r) for r in rows]

    def queue_entries(self, *, status: str | None = None) -> list[QueuedMail]:
        sql, params = "SELECT * FROM outbox", []
        if status:
            sql, params = sql + " WHERE status = ?", [status]
        return [_queued(r) for r in self.db.execute(sql + " ORDER BY id", params)]

    def queue_sending(self, queue_id: int) -> None:
        """Written (and committed) before the SMTP transaction starts."""
        self._write(
            "UPDATE outbox SET status = 'sending', attempts = attempts + 1, updated_at = ? "
            "WHERE id = ?",
            (_now(), queue_id),
        )

    def queue_sent(self, queue_id: int) -> None:
        """Written after the SMTP server accepted the message."""
        now = _now()
        self._write(
            "UPDATE outbox SET status = 'sent', last_error = '', sent_at = ?, updated_at = ? "
            "WHERE id = ?",
            (now, now, queue_id),
        )

    def queue_deferred(self, queue_id: int, *, error: str, next_attempt_at: float) -> None:
        self._write(
            "UPDATE outbox SET status = 'queued', last_error = ?, next_attempt_at = ?, "
            "updated_at = ? WHERE id = ?",
            (error[:2000], next_attempt_at, _now(), queue_id),
        )

    def queue_refused(self, queue_id: int, *, error: str) -> None:
        self._write(
            "UPDATE outbox SET status = 'refused', last_error = ?, updated_at = ? WHERE id = ?",
            (error[:2000], _now(), queue_id),
        )

    def queue_copied(self, queue_id: int, state: int) -> None:
        """The Sent copy: -1 before the APPEND, 1 after it."""
        self._write(
            "UPDATE outbox SET copied = ?, updated_at = ? WHERE id = ?", (state, _now(), queue_id)
        )

    def queue_handed_off(self, queue_id: int) -> None:
        self._write(
            "UPDATE outbox SET handed_off = 1, updated_at = ? WHERE id = ?", (_now(), queue_id)
        )

    # --- review
    def get(self, entry_id: int) -> Entry | None:
        row = self.db.execute("SELECT * FROM messages WHERE id = ?", (entry_id,)).fetchone()
        return _entry(row) if row else None

    def entries(
        self,
        *,
        action: str | None = None,
        topic: str | None = None,
        since: str | None = None,
        limit: int = 50,
    ) -> list[Entry]:
        sql = "SELECT * FROM messages WHERE 1 = 1"
        params: list[object] = []
        if action:
            sql += " AND action = ?"
            params.append(action)
        if topic:
            sql += " AND (',' || topics || ',') LIKE ?"
            params.append(f"%,{topic},%")
        if since:
            sql += " AND created_at >= ?"
            params.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_entry(r) for r in self.db.execute(sql, params)]

    def __iter__(self) -> Iterator[Entry]:
        return (_entry(r) for r in self.db.execute("SELECT * FROM messages ORDER BY id"))

    # --- what staff did with the drafts
    def record_review(
        self,
        entry_id: int,
        verdict: str,
        *,
        topics: Iterable[str] = (),
        similarity: float | None = None,
        sent_message_id: str = "",
        source: str = "",
    ) -> bool:
        """Record a verdict on an entry's draft; False when this one was recorded already (a
        correction to other topics replaces the earlier correction's topics).

        ``model_topics`` is what the model drafted for: the entry's topics at its first review,
        kept when a correction later changes the entry's topics.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        first = self.db.execute(
            "SELECT model_topics FROM reviews WHERE entry_id = ? ORDER BY id LIMIT 1", (entry_id,)
        ).fetchone()
        if first is not None:
            model_topics = str(first[0])
        else:
            entry = self.get(entry_id)
            model_topics = ",".join(entry.topics) if entry else ""
        written = self._write(
            """
            INSERT INTO reviews (entry_id, verdict, model_topics, topics, similarity,
                                 sent_message_id, source, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (entry_id, verdict, sent_message_id) DO UPDATE SET
                topics = excluded.topics, created_at = excluded.created_at
            WHERE topics != excluded.topics
            """,
            (
                entry_id,
                verdict,
                model_topics,
                ",".join(topics),
                similarity,
                sent_message_id,
                source,
                _now(),
            ),
        )
        return written.rowcount > 0

    def reviews(self, entry_id: int | None = None) -> list[Review]:
        """The reviews of one entry (or of all), oldest first."""
        if entry_id is None:
            rows = self.db.execute("SELECT * FROM reviews ORDER BY id")
        else:
            rows = self.db.execute(
                "SELECT * FROM reviews WHERE entry_id = ? ORDER BY id", (entry_id,)
            )
        return [_review(r) for r in rows]

    def record_draft(
        self,
        source_id: str,
        text: str,
        *,
        entry_id: int | None = None,
        message_id: str = "",
        topics: Iterable[str] = (),
    ) -> None:
        """Keep the text of a draft as it was written, to compare with what staff send."""
        self._write(
            "INSERT INTO drafts (entry_id, source_id, message_id, topics, text, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry_id, source_id, message_id, ",".join(topics), text, _now()),
        )

    def draft_text(self, source_id: str) -> str | None:
        """The text of the latest draft recorded for this original's Message-ID, if any."""
        row = self.db.execute(
            "SELECT text FROM drafts WHERE source_id = ? ORDER BY id DESC LIMIT 1", (source_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


@dataclass(frozen=True)
class _Written:
    """What a writing statement gave back: its RETURNING rows and how many rows it changed."""

    rows: list[sqlite3.Row]
    rowcount: int


def _reason(exc: BaseException, path: Path) -> str:
    """Why the journal cannot be opened, in words (not "[Errno 17] File exists: '/x'")."""
    if isinstance(exc, NotADirectoryError | FileExistsError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a directory"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        folder=row["folder"],
        uidvalidity=row["uidvalidity"],
        uid=row["uid"],
        message_id=row["message_id"],
        sender=row["sender"],
        subject=row["subject"],
        status=row["status"],
        action=row["action"],
        topics=tuple(t for t in row["topics"].split(",") if t),
        confidence=row["confidence"],
        reason=row["reason"],
        outcome=row["outcome"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _review(row: sqlite3.Row) -> Review:
    return Review(
        id=row["id"],
        entry_id=row["entry_id"],
        verdict=row["verdict"],
        model_topics=tuple(t for t in row["model_topics"].split(",") if t),
        topics=tuple(t for t in row["topics"].split(",") if t),
        similarity=row["similarity"],
        sent_message_id=row["sent_message_id"],
        source=row["source"],
        created_at=row["created_at"],
    )


def _queued(row: sqlite3.Row) -> QueuedMail:
    return QueuedMail(
        id=row["id"],
        entry_id=row["entry_id"],
        kind=row["kind"],
        recipient=row["recipient"],
        message_id=row["message_id"],
        raw=bytes(row["raw"]),
        folder=row["folder"],
        uidvalidity=row["uidvalidity"],
        uid=row["uid"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        copied=row["copied"],
        handed_off=bool(row["handed_off"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
    )


__all__ = [
    "MIGRATIONS",
    "QUEUE_STATUSES",
    "STATUSES",
    "VERDICTS",
    "Entry",
    "Journal",
    "QueuedMail",
    "Review",
]
