"""Hot statements run on the database driver directly.

SQLAlchemy Core costs far more CPU per statement than SQLite takes to run one: every `Connection.execute`
builds a cache key, an execution context and result metadata. On the small-file path (a PUT's commit, a
GET's stat and read events) that was most of the server's CPU (issue 12's profiles). Here a statement is
compiled ONCE per dialect by SQLAlchemy (so the SQL and its parameter style stay the dialect's own: `?` for
sqlite3, `%(name)s` for psycopg) and then run on the DB-API cursor of the SQLAlchemy connection it is given,
inside that connection's transaction and savepoints.

Errors are raised as SQLAlchemy's own exception classes (`IntegrityError`, `DataError`...), exactly as
`Connection.execute` would raise them, so callers that map them (an existing name to 409, a value the
database refuses to 400) behave as before. Rows come back as plain tuples, without SQLAlchemy's result
processing; the statements used here only read columns whose driver values are already what the caller
wants (integers, strings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

#: (dialect, key) -> (SQL, parameter order or None, values of the statement's own literals)
_COMPILED: dict[tuple[str, str], tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}


def compiled(
    conn: Connection, key: str, build: Callable[[], ClauseElement]
) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
    """The SQL string of the statement `build()` for this connection's dialect, its parameter order (None
    for a named parameter style) and the values of the literals SQLAlchemy made parameters of (`x + 1`),
    compiled the first time `key` is used."""
    k = (conn.dialect.name, key)
    got = _COMPILED.get(k)
    if got is None:
        c = build().compile(dialect=conn.dialect)
        order = getattr(c, "positiontup", None)
        construct: Any = c.construct_params  # SQLCompiler's takes _check (Compiled's signature does not say)
        bound: dict[str, Any] = construct(_check=False) or {}
        literals = {k: v for k, v in bound.items() if v is not None}
        got = _COMPILED[k] = (c.string, tuple(order) if order else None, literals)
    return got


def _args(order: tuple[str, ...] | None, literals: dict[str, Any], params: dict[str, Any]) -> Any:
    if literals:
        params = {**literals, **params}
    return params if order is None else tuple(params[name] for name in order)


def cursor(conn: Connection) -> Any:
    """A DB-API cursor on the connection's own DB-API connection (in its transaction)."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def execute(conn: Connection, key: str, build: Callable[[], ClauseElement], params: dict[str, Any]) -> Any:
    """Run the statement once with `params`; the DB-API cursor (fetch from it, or read `rowcount`)."""
    sql, order, literals = compiled(conn, key, build)
    return run(conn, sql, _args(order, literals, params))


def rowcount(conn: Connection, key: str, build: Callable[[], ClauseElement], params: dict[str, Any]) -> int:
    """Run the statement once with `params` (an UPDATE or DELETE); how many rows it changed."""
    cur = execute(conn, key, build, params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()


def run(conn: Connection, sql: str, args: Any) -> Any:
    """Run SQL compiled by the caller for this connection's dialect, with its arguments; the cursor."""
    cur = cursor(conn)
    try:
        cur.execute(sql, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, args, exc) from exc
    return cur


def execute_many(
    conn: Connection, key: str, build: Callable[[], ClauseElement], rows: Sequence[dict[str, Any]]
) -> None:
    """Run the statement once per row of `rows` (the driver's executemany)."""
    if not rows:
        return
    sql, order, literals = compiled(conn, key, build)
    cur = cursor(conn)
    args = [_args(order, literals, row) for row in rows]
    try:
        cur.executemany(sql, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, args, exc) from exc
    finally:
        cur.close()


def raw(conn: Connection, sql: str) -> None:
    """A statement without parameters (SAVEPOINT and the like)."""
    cur = cursor(conn)
    try:
        cur.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, (), exc) from exc
    finally:
        cur.close()


def _wrapped(conn: Connection, sql: str, args: Any, exc: Exception) -> BaseException:
    dbapi = conn.dialect.loaded_dbapi
    return DBAPIError.instance(sql, args, exc, dbapi.Error, dialect=conn.dialect)
