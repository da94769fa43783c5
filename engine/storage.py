"""Storage: LanceDB tables, the DuckDB runs/matches file, and the content-addressed photo store.

Trade-offs worth knowing:

* LanceDB writes are **upserts by key** (``merge_insert``) in large batches. Each call creates a new table version,
  so many tiny writes fragment the table; jobs buffer rows and write thousands at a time. Readers can pin a
  version (``LanceStore.open(name, version=...)``) — the match job records the versions it read.
* DuckDB allows **one writer process at a time**, and a process holding the file read-write blocks every other
  process, readers included. So writers never hold it: :meth:`RunsDB.write` opens, runs one transaction and closes,
  and readers (dashboard, analysts) use :meth:`RunsDB.read`, which opens read-only and retries briefly while a
  writer is in its transaction.
* Photos are stored under their sha256 (``ab/cd/<sha256>.<ext>``): the same image posted twice is stored once, a
  rerun never rewrites a file, and any fsspec URI (``s3://bucket/photos``) works in place of a local path.
* Object storage is configuration only: ``lance_uri``/``photo_store`` as ``s3://`` URIs plus
  ``settings.storage_options`` (LanceDB's key names), which :func:`fsspec_options` translates for the photo store.
  Lance commits on S3 are safe for concurrent writers only where the store offers conditional PUT (AWS S3 since
  2024, MinIO, ...) or a commit lock / external manifest store is configured: see docs/SCALE_OUT.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import lancedb
import pyarrow as pa

from engine import ids, schema
from engine.errors import HomewardError


class StorageError(HomewardError):
    """A store cannot be opened or written; the message names the location."""


_IO_MARKERS = ("os error", "no space left", "file too large", "read-only file system", "permission denied",
               "disk quota", "input/output error")  # fmt: skip


def _is_io_error(exc: BaseException) -> bool:
    """A full disk, a file-size limit, a read-only or unwritable store (not a bad query or a commit conflict)."""
    return isinstance(exc, OSError) or any(m in str(exc).lower() for m in _IO_MARKERS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _make_dir(path: Path, what: str) -> None:
    """Create ``path`` (and parents), or say in one line why not (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise StorageError(f"cannot use {str(path)!r} for {what}: it or a folder above it is a file") from exc
    except OSError as exc:
        raise StorageError(f"cannot create the folder {str(path)!r} for {what}: {exc.strerror or exc}") from exc


#: DuckDB's messages for a file that is not (or no longer) a database: when opening it, and later when a query
#: reads a damaged block (narrower there: "could not read" then is as likely a query's own missing input file).
_NOT_A_DATABASE = ("corrupt", "checksum", "not a valid duckdb", "could not read", "is a directory")
_DAMAGED_BLOCK = ("corrupt database", "checksum")


def _duckdb_unreadable(path: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"cannot read DuckDB file {path}: {_first_line(exc)}. Move it aside (a fresh one is created on the next "
        "run; crawl and match history start over) or restore it from a backup"
    )


def _is_corrupt(exc: BaseException, markers: tuple[str, ...] = _DAMAGED_BLOCK) -> bool:
    return isinstance(exc, duckdb.Error) and any(m in str(exc).lower() for m in markers)


class LanceStore:
    """The LanceDB database at ``uri`` (local path or object-store URI)."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        if "://" not in uri:
            _make_dir(Path(uri), "LanceDB")
        try:
            self.db = lancedb.connect(uri, storage_options=dict(storage_options) if storage_options else None)
        except (OSError, RuntimeError, ValueError) as exc:
            raise StorageError(f"cannot open LanceDB at {uri}: {_first_line(exc)}") from exc

    def table_names(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            try:
                page = self.db.list_tables(page_token=token)
            except (OSError, RuntimeError) as exc:
                raise StorageError(f"cannot list the LanceDB tables at {self.uri}: {_first_line(exc)}") from exc
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return names

    def exists(self, name: str) -> bool:
        return name in self.table_names()

    def open(self, name: str, version: int | None = None) -> lancedb.table.Table:
        try:
            table = self.db.open_table(name)
        except (OSError, RuntimeError) as exc:  # Lance reports an unreadable or corrupt table as a RuntimeError
            raise StorageError(f"cannot read LanceDB table {name!r} at {self.uri}: {_first_line(exc)}") from exc
        if version is not None:
            table.checkout(version)
        return table

    def ensure(self, name: str, table_schema: pa.Schema) -> lancedb.table.Table:
        """Open ``name``, creating it empty with ``table_schema`` when missing; refuse a conflicting schema.

        A table written before a column was added to the schema (``listings.geo_source``) gets that column, all
        null, so an old store keeps loading and takes new rows; readers see null for its old rows."""
        if self.exists(name):
            table = self.open(name)
            existing = table.schema
            for fld in table_schema:
                if fld.name in existing.names and existing.field(fld.name).type != fld.type:
                    raise StorageError(
                        f"LanceDB table {name!r} at {self.uri} has column {fld.name!r} of type "
                        f"{existing.field(fld.name).type}, but this run writes {fld.type}. Vectors of different "
                        "models or dimensions cannot share a table: enrich with the profile that wrote it "
                        "(`homeward enrich --profile NAME`), use another data_dir, or drop the table."
                    )
            missing = [fld for fld in table_schema if fld.name not in existing.names and fld.nullable]
            if missing:
                table.add_columns(missing)
            return table
        return self.db.create_table(name, schema=table_schema, exist_ok=True)

    def upsert(self, name: str, rows: pa.Table | Sequence[dict[str, Any]], key: str, table_schema: pa.Schema) -> int:
        """Insert new rows and replace rows whose ``key`` already exists, as one new table version."""
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=table_schema)
        if data.num_rows == 0:
            return 0
        data = data.select(table_schema.names).cast(table_schema)
        try:
            table = self.ensure(name, table_schema)
            (table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(data))
        except Exception as exc:
            if _is_io_error(exc):
                raise StorageError(
                    f"cannot write LanceDB table {name!r} at {self.uri}: {exc}. Nothing of this write was committed: "
                    "the table keeps its previous version (free space or fix the store's permissions, then rerun)"
                ) from exc
            raise
        return data.num_rows

    def read(
        self,
        name: str,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """Read a whole table (optionally filtered, optionally only ``columns``: the others are never read); an absent
        table reads as empty."""
        if not self.exists(name):
            return pa.table({})
        table = self.open(name, version)
        if where is None and not columns:
            return table.to_arrow()
        query = table.search() if where is None else table.search().where(where)
        if columns:
            query = query.select(list(columns))
        return query.limit(None).to_arrow()

    def count(self, name: str, where: str | None = None) -> int:
        return self.open(name).count_rows(where) if self.exists(name) else 0

    def version(self, name: str) -> int | None:
        return self.open(name).version if self.exists(name) else None


_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()
_SCHEMA_READY: set[str] = set()


def _file_lock(path: str) -> threading.RLock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(os.path.realpath(path), threading.RLock())


def _split_matches(con: duckdb.DuckDBPyConnection, schema_sql: str) -> None:
    """Make the schema; a file made when ``matches`` was one table gets its rows moved into ``match_pairs`` and
    ``match_members`` first, once (``matches`` is now a view over those two: ``schema.sql`` says why).

    Every old row becomes a pair of its own (the old copies of a pair carried between runs stay separate pairs: same
    values, nothing lost). DuckDB cannot turn a table into a view in place: the table is renamed, ``schema_sql`` makes
    the two tables and the view, the rows are copied by column name (files older than the ``fused`` column get NULL
    there, as the column's ``ALTER`` gave them before) and the old table is dropped, in the caller's
    transaction. Views that name ``matches`` bind to the new view."""
    old = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'matches' AND schema_name = current_schema()"
    ).fetchone()
    if old and old[0]:
        con.execute("ALTER TABLE matches RENAME TO matches_v1")
    con.execute(schema_sql)
    if not (old and old[0]):
        return
    con.execute("CREATE TEMP TABLE _matches_v1 AS SELECT row_number() OVER () AS pair_id, * FROM matches_v1")
    con.execute("INSERT INTO match_pairs BY NAME SELECT * EXCLUDE (run_id, rank_for_lost, rank_for_found) "
                "FROM _matches_v1")  # fmt: skip
    con.execute("INSERT INTO match_members BY NAME SELECT run_id, pair_id, rank_for_lost, rank_for_found "
                "FROM _matches_v1")  # fmt: skip
    con.execute("DROP TABLE _matches_v1")
    con.execute("DROP TABLE matches_v1")


class RunsDB:
    """The DuckDB file: run records, matches, feedback. Short-lived connections, one writer at a time.

    Across processes DuckDB's file lock serialises access (``_connect`` waits for it). Inside one process,
    connections to one file share a database instance, where two concurrent transactions can hit write-write
    conflicts and a read-only connection cannot coexist with a read-write one, so every connection to a file is
    taken under that file's process-wide lock.
    """

    def __init__(self, path: str, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._lock = _file_lock(path)
        _make_dir(Path(path).parent, "the DuckDB file")
        with self._lock:
            if os.path.realpath(path) not in _SCHEMA_READY or not Path(path).exists():
                schema_sql = resources.files("engine.sql").joinpath("schema.sql").read_text()
                with self.write() as con:
                    _split_matches(con, schema_sql)
                _SCHEMA_READY.add(os.path.realpath(path))

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.Error as exc:
                if _is_corrupt(exc, _NOT_A_DATABASE):
                    raise _duckdb_unreadable(self.path, exc) from exc
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise StorageError(f"cannot open DuckDB file {self.path}: {_first_line(exc)}") from exc
                time.sleep(0.2)

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction: everything inside commits together or not at all, then the file is released."""
        with self._lock:
            con = self._connect(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if _is_corrupt(exc):
                    raise _duckdb_unreadable(self.path, exc) from exc
                if isinstance(exc, Exception) and _is_io_error(exc):
                    raise StorageError(
                        f"cannot write DuckDB file {self.path}: {exc}. The transaction was rolled back: the file "
                        "keeps its previous contents (free space or fix the permissions, then rerun)"
                    ) from exc
                raise
            finally:
                con.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            con = self._connect(read_only=True)
            try:
                yield con
            except duckdb.Error as exc:
                if _is_corrupt(exc):
                    raise _duckdb_unreadable(self.path, exc) from exc
                raise
            finally:
                con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.read() as con:
            return con.execute(sql, params or []).fetchall()


#: LanceDB (object_store) option names → s3fs keyword arguments.
_S3FS_KEYS = {
    "aws_access_key_id": "key",
    "access_key_id": "key",
    "aws_secret_access_key": "secret",
    "secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
    "aws_endpoint": "endpoint_url",
    "aws_endpoint_url": "endpoint_url",
    "endpoint": "endpoint_url",
    "endpoint_url": "endpoint_url",
}


def fsspec_options(uri: str, storage_options: dict[str, str] | None) -> dict[str, Any]:
    """fsspec keyword arguments for ``uri`` from Homeward's ``storage_options`` (LanceDB's key names).

    For ``s3://`` (s3fs): access key, secret, session token, endpoint and region. Other schemes get nothing (their
    filesystems read credentials from their own environment); local paths never need any.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme not in ("s3", "s3a") or not storage_options:
        return {}
    out: dict[str, Any] = {}
    for name, value in storage_options.items():
        key = _S3FS_KEYS.get(name.lower())
        if key and value not in (None, ""):
            out[key] = str(value)
    region = storage_options.get("aws_region") or storage_options.get("region")
    if region:
        out["client_kwargs"] = {"region_name": str(region)}
    return out


def read_uri(uri: str, storage_options: dict[str, str] | None = None) -> bytes:
    """The bytes at ``uri`` (local path or fsspec URI), with the object-store options of the deployment."""
    with fsspec.open(uri, "rb", **fsspec_options(uri, storage_options)) as fh:
        return fh.read()


class PhotoStore:
    """Content-addressed photo files under a local path or any fsspec URI (``storage_options``: see
    :func:`fsspec_options`)."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.base = fsspec.core.url_to_fs(self.root, **fsspec_options(self.root, self.storage_options))
        self.local = "://" not in self.root or self.root.startswith("file://")
        try:
            self.fs.makedirs(self.base, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the photo store {self.root}: {exc.strerror or exc}") from exc

    def uri_for(self, photo_id: str, ext: str) -> str:
        return f"{self.root}/{photo_id[:2]}/{photo_id[2:4]}/{photo_id}.{ext}"

    def put(self, data: bytes, ext: str) -> tuple[str, str]:
        """Store ``data`` once; return ``(photo_id, uri)``. Readers never see half a photo: a local write is
        temp-file + rename, an object-store write is one PUT (atomic by itself)."""
        pid = ids.photo_id(data)
        uri = self.uri_for(pid, ext)
        path = f"{self.base}/{pid[:2]}/{pid[2:4]}/{pid}.{ext}"
        if not self.fs.exists(path):
            if not self.local:
                self.fs.pipe_file(path, data)
                return pid, uri
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{time.monotonic_ns()}"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)
        return pid, uri

    def get(self, uri: str) -> bytes:
        return read_uri(uri, self.storage_options)


def open_stores(settings: Any) -> tuple[LanceStore, RunsDB, PhotoStore]:
    """The three stores named by ``settings`` (an :class:`engine.config.Settings`)."""
    if "://" not in settings.data_dir:
        settings.ensure_writable()
    options = getattr(settings, "storage_options", None)
    return LanceStore(settings.lance, options), RunsDB(settings.duckdb), PhotoStore(settings.photos, options)


def upsert_listings(store: LanceStore, rows: Iterable[dict[str, Any]]) -> int:
    return store.upsert("listings", list(rows), key="listing_id", table_schema=schema.LISTINGS)


def upsert_photos(store: LanceStore, rows: Iterable[dict[str, Any]]) -> int:
    return store.upsert("photos", list(rows), key="photo_key", table_schema=schema.PHOTOS)
