"""The embedded registry: one SQLite file in a state folder, shared by every process on the host.

Why SQLite: transactions make "write the state and append the audit entry" one atomic step, WAL mode lets
replicas read while one writes, and it is in the standard library. Each change runs in `BEGIN IMMEDIATE`,
which takes the write lock before reading, so two replicas promoting at once serialise instead of both
planning from the same stale view. Triggers make the audit table append-only at the database level, so not
even a bug in this module can rewrite history.

The file name must be a plain name inside `state_dir`, never a path: operators pass the folder, and a
name with separators or `..` could point the registry at any file the process can write.

    registry = SqliteRegistry("runs/state")           # runs/state/rollout.sqlite3
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from serving.rollout.errors import RegistryPathError
from serving.rollout.registry import (
    AuditEntry,
    Fence,
    ModelView,
    Plan,
    RolloutRegistry,
    RouteSettings,
    VersionFacts,
    VersionRecord,
)
from serving.rollout.states import VersionState

DEFAULT_FILE = "rollout.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, facts TEXT NOT NULL,
    registered_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS routes (
    model TEXT PRIMARY KEY, canary_weight REAL NOT NULL, shadow_sample_rate REAL NOT NULL,
    canary_salt TEXT NOT NULL, shadow_salt TEXT NOT NULL, previous_live INTEGER);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version INTEGER NOT NULL, from_state TEXT,
    to_state TEXT NOT NULL, actor TEXT NOT NULL, at_ms INTEGER NOT NULL, reason TEXT NOT NULL,
    metrics TEXT NOT NULL, weight REAL);
CREATE INDEX IF NOT EXISTS audit_by_model ON audit (model, version, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('changes', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1);
CREATE TABLE IF NOT EXISTS shared (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_ms INTEGER);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def registry_path(state_dir: str | Path, filename: str = DEFAULT_FILE) -> Path:
    """`state_dir/filename`, refusing a filename that is not a plain name inside the folder."""
    root = Path(state_dir).resolve()
    if not filename or filename != Path(filename).name or filename in (".", ".."):
        raise RegistryPathError(f"registry file: must be a plain file name inside {root}, got {filename!r}")
    path = (root / filename).resolve()
    if path.parent != root:  # a symlink pointing elsewhere
        raise RegistryPathError(f"registry file: {filename!r} resolves to {path}, outside {root}")
    return path


class SqliteRegistry(RolloutRegistry):
    """The registry in `state_dir/filename` (created with the folder if absent). Thread-safe."""

    def __init__(self, state_dir: str | Path, filename: str = DEFAULT_FILE, *, busy_timeout_s: float = 10.0,
                 clock_ms: Callable[[], int] | None = None) -> None:
        super().__init__(clock_ms)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = registry_path(state_dir, filename)
        # isolation_level=None: no implicit transactions; every write below opens its own BEGIN IMMEDIATE
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed transition survives power loss
            self._db.executescript(_SCHEMA)
            schema = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
        if schema != SCHEMA_VERSION:
            raise RegistryPathError(f"{self.path}: registry schema {schema}, this build reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- primitives --------------------------------------------------------------------------------------
    def _read(self, model: str) -> ModelView:
        rows = self._db.execute("SELECT version, state, facts, registered_ms, updated_ms FROM versions "
                                "WHERE model = ?", (model,)).fetchall()
        records = {v: VersionRecord(model, v, VersionState(st), VersionFacts.from_dict(json.loads(f)), reg, upd)
                   for v, st, f, reg, upd in rows}
        r = self._db.execute("SELECT canary_weight, shadow_sample_rate, canary_salt, shadow_salt, previous_live "
                             "FROM routes WHERE model = ?", (model,)).fetchone()
        settings = RouteSettings() if r is None else RouteSettings(*r)
        return ModelView(model, records, settings)

    def _view(self, model: str) -> ModelView:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for both tables
            try:
                return self._read(model)
            finally:
                self._db.execute("COMMIT")

    def _transact(self, model: str, plan: Callable[[ModelView], Plan], actor: str,
                  fence: Fence | None = None) -> list[AuditEntry]:
        if not actor:
            raise ValueError("actor: every change must name who made it")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # holds the write lock: no lease can change before COMMIT
            try:
                if fence is not None:
                    row = self._db.execute("SELECT holder, expires_ms FROM leases WHERE name = ?",
                                           (fence.name,)).fetchone()
                    if row is None or row[0] != fence.holder or row[1] <= self._clock_ms():
                        raise fence.refused(model, row[0] if row is not None and row[1] > self._clock_ms()
                                            else None)
                entries = self._apply(model, plan(self._read(model)), actor)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entries

    def _apply(self, model: str, p: Plan, actor: str) -> list[AuditEntry]:
        if not p.states and not p.audit and p.settings is None:
            return []
        now = self._clock_ms()
        db = self._db
        if p.new_record is not None:
            for version, state in p.states.items():
                db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                           (model, version, state.value, json.dumps(p.new_record.to_dict(), default=float), now, now))
        else:
            for version, state in p.states.items():
                db.execute("UPDATE versions SET state = ?, updated_ms = ? WHERE model = ? AND version = ?",
                           (state.value, now, model, version))
        if p.settings is not None:
            s = p.settings
            db.execute("INSERT OR REPLACE INTO routes VALUES (?, ?, ?, ?, ?, ?)",
                       (model, s.canary_weight, s.shadow_sample_rate, s.canary_salt, s.shadow_salt, s.previous_live))
        entries = []
        for d in p.audit:
            cur = db.execute("INSERT INTO audit (model, version, from_state, to_state, actor, at_ms, reason, metrics, "
                             "weight) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (model, d.version, d.from_state.value if d.from_state else None, d.to_state.value, actor,
                              now, d.reason, json.dumps(dict(d.metrics), default=float), d.weight))
            entries.append(AuditEntry(int(cur.lastrowid or 0), model, d.version, d.from_state, d.to_state, actor, now,
                                      d.reason, dict(d.metrics), d.weight))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
        return entries

    # -- shared analysis state ---------------------------------------------------------------------------
    # Expiry uses the wall clock, which every process on the host shares.
    def put_shared(self, key: str, value: str, ttl_ms: int | None = None) -> None:
        expires = None if ttl_ms is None else self._clock_ms() + int(ttl_ms)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO shared VALUES (?, ?, ?)", (key, value, expires))

    def get_shared(self, prefix: str) -> dict[str, str]:
        with self._lock:  # substr, not LIKE: a prefix with % or _ in it matches only itself
            rows = self._db.execute("SELECT key, value FROM shared WHERE substr(key, 1, ?) = ? AND "
                                    "(expires_ms IS NULL OR expires_ms > ?)",
                                    (len(prefix), prefix, self._clock_ms())).fetchall()
        return dict(rows)

    def delete_shared(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM shared WHERE key = ?", (key,))

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        now = self._clock_ms()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT holder, expires_ms FROM leases WHERE name = ?", (name,)).fetchone()
                won = row is None or row[0] == holder or row[1] <= now
                if won:
                    self._db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                                     (name, holder, now + int(ttl_ms)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return won

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # -- reads -------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT model FROM versions ORDER BY model")]

    def audit(self, model: str | None = None, version: int | None = None, since_seq: int = 0) -> list[AuditEntry]:
        query = ("SELECT seq, model, version, from_state, to_state, actor, at_ms, reason, metrics, weight "
                 "FROM audit WHERE seq > ?")
        args: list[object] = [since_seq]
        if model is not None:
            query += " AND model = ?"
            args.append(model)
        if version is not None:
            query += " AND version = ?"
            args.append(version)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [AuditEntry(seq, m, v, VersionState(f) if f else None, VersionState(t), actor, at, reason,
                           json.loads(metrics), weight)
                for seq, m, v, f, t, actor, at, reason, metrics, weight in rows]

    def change_counter(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()[0])
