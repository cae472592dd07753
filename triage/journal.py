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
        """
    )


# Ordered migrations: the schema is at version N once the first N have run.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1,)

STATUSES = ("pending", "done", "failed")


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Journal:
    """The SQLite journal at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"{self.path}: cannot open the journal ({exc}); check TRIAGE_STATE_DB and that "
                "its directory is writable"
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

    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:  # disk full, read-only, locked
            raise TriageError(f"{self.path}: cannot write the journal ({exc})") from exc

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
            "SELECT * FROM messages WHERE message_id = ? AND status != 'pending' ORDER BY id LIMIT 1",
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
        """Record the intent before acting; returns the row id (an earlier pending row is reused)."""
        now = _now()
        cursor = self._write(
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
            (folder, uidvalidity, uid, message_id, sender[:200], subject[:300], action,
             ",".join(topics), confidence, reason, now, now),
        )
        row = cursor.fetchone()
        if row is None:
            raise TriageError(f"journal: message {folder}/{uidvalidity}/{uid} is already finished")
        return int(row[0])

    def finish(self, entry_id: int, *, status: str = "done", outcome: str = "", error: str = "") -> None:
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

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


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


__all__ = ["MIGRATIONS", "STATUSES", "Entry", "Journal"]
