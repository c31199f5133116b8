"""Capture's own reads: one runner for its queries on a bare driver cursor (no execute wrappers,
not in ``connection.queries``), the database converters, and the row reads every capture path
shares -- by key, by column, by a statement's own WHERE, and the rows a REPLACE or a
database-level cascade is about to delete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dbevents.registry import TableInfo, unwrap_key
from dbevents.sql import Statement, params_between, pk_only_where, split_qualified, values_rows

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from dbevents.capture.vendors import Vendor

CREATED, UPDATED, DELETED = "created", "updated", "deleted"
# Key types whose values order as the rows were inserted (an upsert's "highest key before it").
INTEGER_TYPES = frozenset(
    {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
     "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField"}
)


class Rows:
    """Reads rows for one connection's capture, converted as the ORM converts them."""

    def __init__(self, connection: BaseDatabaseWrapper, vendor: Vendor) -> None:
        self.connection = connection
        self.vendor = vendor
        self._converters: dict[str, list[Any]] = {}

    def query(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run capture's own SELECT on a bare driver cursor: no execute wrappers, not in
        ``connection.queries``, not counted by ``assertNumQueries``."""
        return self._run(sql, params, fetch=True)

    def execute(self, sql: str) -> None:
        """Run one statement of capture's own (``SAVEPOINT`` ...) on a bare driver cursor."""
        self._run(sql, None, fetch=False)

    def begin_now(self) -> None:
        """Send the BEGIN of capture's own transaction now if it waits for the statement."""
        if self.vendor.take_begin():
            self._run("BEGIN", None, fetch=False)

    def _run(self, sql: str, params: Any, fetch: bool) -> list[tuple[Any, ...]]:
        conn = self.connection
        conn.ensure_connection()
        with conn.wrap_database_errors:
            cursor = conn.create_cursor()
            try:
                if self.vendor.take_begin():
                    cursor.execute("BEGIN")  # capture reads rows before the statement: begin now
                if params is None:
                    cursor.execute(sql)
                else:
                    cursor.execute(sql, params)
                return list(cursor.fetchall()) if fetch else []
            finally:
                cursor.close()

    def convert(self, info: TableInfo, raw: Iterable[Any]) -> tuple[Any, ...]:
        """A row of ``info.fields`` as the database converters of the ORM make it."""
        converters = self._converters.get(info.key)
        if converters is None:
            converters = []
            for f in info.fields:
                # get_col(), not cached_col: a foreign key's column converts as its target
                # field (a parent link to a UUID key is a UUID), as in the ORM's own SELECTs.
                col = f.get_col(f.model._meta.db_table)
                converters.append(
                    (self.connection.ops.get_db_converters(col) + col.get_db_converters(self.connection), col)
                )
            self._converters[info.key] = converters
        out = []
        for value, (funcs, col) in zip(raw, converters, strict=True):
            for func in funcs:
                value = func(value, col, self.connection)
            out.append(value)
        return tuple(out)

    def lock(self) -> str:
        return " FOR UPDATE" if self.connection.features.has_select_for_update else ""

    def chunk_size(self, width: int = 1) -> int:
        return max(1, min((self.connection.features.max_query_params or 10_000) - 10, 10_000) // width)

    def by_keys(self, info: TableInfo, keys: list[Any], fields: Sequence[Any],
                also: str = "") -> Iterator[tuple[Any, ...]]:
        """``SELECT <fields> FROM <table> WHERE pk IN (<keys>)``, in chunks the database accepts;
        yields converted rows of ``info.fields``, else the driver's rows (``also``: one more
        column expression at their end)."""
        qn = self.connection.ops.quote_name
        cols = ", ".join([*(qn(column(f)) for f in fields), *([also] if also else [])])
        width = len(info.pk_fields)
        size = self.chunk_size(width)
        prepared = [p for p in (self.prepared(info, k) for k in dict.fromkeys(keys)) if p is not None]
        table = qn(info.model._meta.db_table)
        for i in range(0, len(prepared), size):
            chunk = prepared[i:i + size]
            marks = key_list(["%s"] * (len(chunk) * width), width)
            prep = [v for values in chunk for v in values]
            sql = f"SELECT {cols} FROM {table} WHERE {self.key_columns(info, None)} IN ({marks})"
            for raw in self.query(sql, prep):
                yield self.convert(info, raw) if fields is info.fields else raw

    def prepared(self, info: TableInfo, key: Any) -> list[Any] | None:
        """``key``'s column values for the database, or None when it is no value the table can
        hold (a key from a statement's own parameters: MySQL refuses 0 for an AutoField)."""
        try:
            return info.pk_db_values(key, self.connection)
        except (ValueError, TypeError):
            return None

    def existing_keys(self, info: TableInfo, keys: list[Any]) -> list[Any]:
        return [info.pk_to_python(row) for row in self.by_keys(info, keys, info.pk_fields)]

    def load(self, info: TableInfo, pks: list[Any]) -> dict[Any, tuple[Any, ...]]:
        """The rows of ``info`` with these keys, by key."""
        return {info.pk_of(row): row for row in self.by_keys(info, pks, info.fields)}

    def key_columns(self, info: TableInfo, ref: str | None) -> str:
        """The primary key's column reference(s): ``t."id"``, or ``(t."a", t."b")``."""
        qn = self.connection.ops.quote_name
        cols = [f"{ref}.{qn(column(f))}" if ref else qn(column(f)) for f in info.pk_fields]
        return cols[0] if len(cols) == 1 else f"({', '.join(cols)})"

    def by_column(self, info: TableInfo, field: Any, values: list[Any]) -> Iterator[tuple[Any, ...]]:
        """``SELECT <info.fields> FROM <table> WHERE <field> IN (<values>) FOR UPDATE``, chunked;
        yields converted rows."""
        qn = self.connection.ops.quote_name
        cols = ", ".join(qn(column(f)) for f in info.fields)
        target = field.target_field
        prep = [target.get_db_prep_value(unwrap_key(v), self.connection) for v in dict.fromkeys(values)]
        size = self.chunk_size()
        for i in range(0, len(prep), size):
            chunk = prep[i:i + size]
            sql = (f"SELECT {cols} FROM {qn(info.model._meta.db_table)} WHERE {qn(column(field))} "
                   f"IN ({', '.join(['%s'] * len(chunk))}){self.lock()}")
            for raw in self.query(sql, chunk):
                yield self.convert(info, raw)

    def of_statement(self, stmt: Statement, info: TableInfo, params: Any, pk_only: bool = False) -> list[tuple[Any, ...]]:
        """SELECT (and lock) the rows an UPDATE/DELETE is about to write, with its own WHERE."""
        qn = self.connection.ops.quote_name
        fields = info.pk_fields if pk_only else info.fields
        cols = ", ".join(f"{stmt.ref}.{qn(column(f))}" for f in fields)
        where = f" WHERE {stmt.sql[stmt.where[0]:stmt.where[1]]}" if stmt.where else ""
        stop = stmt.returning_at if stmt.returning_at is not None else stmt.end
        tail = stmt.sql[stmt.where_end:stop] if stmt.where_end < stop else ""
        # The parameters of the join list (DELETE), WHERE, ORDER BY and LIMIT, in that order.
        start = stmt.where[0] if stmt.kind == "update" and stmt.where else (stmt.from_start or stmt.where_end)
        if stmt.kind == "update" and not stmt.where:
            start = stmt.where_end
        select_params = params_between(stmt, params, start, stop)
        joins = None
        if stmt.kind == "update" and stmt.from_start is not None:  # MySQL: UPDATE <join list> SET
            joins = (stmt.from_start, stmt.set_start or stmt.from_start)
        elif stmt.kind == "update" and stmt.join_list is not None:  # PostgreSQL: UPDATE t SET ... FROM <join list>
            joins = stmt.join_list
        if joins is not None and not isinstance(params, dict):
            # Its join list's parameters come first.
            select_params = list(params_between(stmt, params, *joins) or []) + list(select_params or [])
        lock = self.lock()
        if lock and stmt.join_list is not None and self.connection.features.has_select_for_update_of:
            lock = f" FOR UPDATE OF {stmt.ref}"  # as the statement, lock the target's rows only
        with_list = stmt.sql[:stmt.with_end]  # a leading read-only WITH list the WHERE may use
        if with_list and not isinstance(params, dict):
            select_params = list(params_between(stmt, params, 0, stmt.with_end) or []) + list(select_params or [])
        rows = self.query(f"{with_list} SELECT {cols} FROM {stmt.source}{where} {tail}{lock}", select_params)
        # A join can meet a row several times.
        if pk_only:
            return list({tuple(r): r for r in rows}.values())
        unique: dict[Any, tuple[Any, ...]] = {}
        for r in rows:
            converted = self.convert(info, r)
            unique.setdefault(info.pk_of(converted), converted)
        return list(unique.values())

    def keys_of_statement(self, stmt: Statement, info: TableInfo, params: Any) -> list[Any]:
        """The keys of the rows an UPDATE/DELETE is about to write, locked."""
        return [info.pk_to_python(r) for r in self.of_statement(stmt, info, params, pk_only=True)]

    def db_cascade(self, info: TableInfo, keys: list[Any]) -> list[tuple[TableInfo, list[Any], str]]:
        """Before a DELETE of ``keys`` from ``info``: the rows of watched tables the database
        deletes (``DB_CASCADE``, through any depth) or updates (``DB_SET_NULL``,
        ``DB_SET_DEFAULT``) with them, read and locked in the same transaction."""
        found: list[tuple[TableInfo, list[Any], str]] = []
        todo = [(info, keys)]
        seen: set[tuple[str, Any]] = set()
        while todo:
            parent, parent_keys = todo.pop()
            for child, fk, operation in parent.db_children:  # fk: a ForeignKey
                if not parent_keys or fk.target_field not in parent.pk_fields:
                    continue
                rows = list(self.by_column(child, fk, parent_keys))
                rows = [r for r in rows if (child.key, child.pk_of(r)) not in seen]
                seen.update((child.key, child.pk_of(r)) for r in rows)
                if not rows:
                    continue
                if operation == "CASCADE":
                    found.append((child, rows, DELETED))
                    todo.append((child, [child.pk_of(r) for r in rows]))
                else:
                    found.append((child, [child.pk_of(r) for r in rows], UPDATED))
        return found

    def replaced(self, stmt: Statement, info: TableInfo, params: Any) -> list[tuple[Any, ...]] | None:
        """The rows a REPLACE (``INSERT OR REPLACE``) is about to delete: those that share the
        primary key or a unique key with one of its rows. Read (and locked) before it runs;
        None when it names no columns, or its values are neither plain nor a SELECT."""
        if not stmt.columns:
            return None
        rows = values_rows(stmt, params)
        if rows is None:
            return self._replaced_by_query(stmt, info, params) if stmt.select_start is not None else None
        qn = self.connection.ops.quote_name
        conds, args = [], []
        for unique in unique_sets(info):
            names = [column(f).lower() for f in unique]
            if not all(n in stmt.columns for n in names):
                continue
            index = [stmt.columns.index(n) for n in names]
            keys = list(dict.fromkeys(tuple(r[i] for i in index) for r in rows))
            keys = [k for k in keys if None not in k]
            if not keys:
                continue
            cols = ", ".join(qn(n) for n in (column(f) for f in unique))
            marks = key_list(["%s"] * (len(keys) * len(unique)), len(unique))
            conds.append(f"{cols if len(unique) == 1 else f'({cols})'} IN ({marks})")
            args += [v for k in keys for v in k]
        return self._meeting(info, "", conds, args)

    def _replaced_by_query(self, stmt: Statement, info: TableInfo, params: Any) -> list[tuple[Any, ...]]:
        """``REPLACE INTO t (cols) SELECT ...``: the rows of ``t`` that share a primary or unique
        key with a row of its query, which runs once more for that (as a CTE with the INSERT's
        column names)."""
        assert stmt.select_start is not None and stmt.columns is not None
        qn = self.connection.ops.quote_name
        stop = stmt.returning_at if stmt.returning_at is not None else stmt.end
        names = [f"dbevents_c{i}" for i in range(len(stmt.columns))]
        rows_cte = f"dbevents_rows ({', '.join(names)}) AS ({stmt.sql[stmt.select_start:stop]}) "
        args = params_between(stmt, params, stmt.select_start, stop)
        if stmt.with_end:  # after the statement's own read-only CTEs, which its query may use
            with_list = f"{stmt.sql[:stmt.with_end]}, {rows_cte}"
            if not isinstance(params, dict):
                args = list(params_between(stmt, params, 0, stmt.with_end) or []) + list(args or [])
        else:
            with_list = f"WITH {rows_cte}"
        conds = []
        for unique in unique_sets(info):
            wanted = [column(f).lower() for f in unique]
            if not all(n in stmt.columns for n in wanted):
                continue
            cols = ", ".join(qn(column(f)) for f in unique)
            picked = ", ".join(names[stmt.columns.index(n)] for n in wanted)
            conds.append(f"{cols if len(unique) == 1 else f'({cols})'} IN (SELECT {picked} FROM dbevents_rows)")
        return self._meeting(info, with_list, conds, args)

    def _meeting(self, info: TableInfo, with_list: str, conds: list[str], args: Any) -> list[tuple[Any, ...]]:
        """Read (and lock) the rows of ``info`` that meet one of ``conds``."""
        if not conds:
            return []
        qn = self.connection.ops.quote_name
        table = qn(info.model._meta.db_table)
        fields = ", ".join(qn(column(f)) for f in info.fields)
        found = self.query(f"{with_list}SELECT {fields} FROM {table} WHERE {' OR '.join(conds)}{self.lock()}", args)
        return [self.convert(info, r) for r in found]


# ---------------------------------------------------------------------- what a statement says


def statement_pks(stmt: Statement, info: TableInfo, params: Any) -> set[Any] | None:
    """Keys a statement touches when its own parameters say so; None when they don't."""
    if stmt.kind == "insert":
        return None
    joined = stmt.kind == "update" and stmt.from_start is not None  # MySQL multi-table UPDATE
    if (stmt.where is None or isinstance(params, dict) or info.composite or joined
            or not pk_only_where(stmt, column(info.pk))):
        return None
    values = params_between(stmt, params, stmt.where[0], stmt.where[1])
    return {info.pk_to_python((v,)) for v in values}


def given_keys(stmt: Statement, info: TableInfo, params: Any) -> list[Any] | None:
    """The primary keys an INSERT's VALUES name, when they are plain parameters or literals."""
    rows = values_rows(stmt, params)
    if rows is None or not names_keys(stmt, info):
        return None
    indexes = [stmt.columns.index(column(f).lower()) for f in info.pk_fields]  # type: ignore[union-attr]
    return [info.pk_to_python(tuple(r[i] for i in indexes)) for r in rows]


def names_keys(stmt: Statement, info: TableInfo) -> bool:
    """Whether an INSERT's column list gives every primary-key column."""
    return bool(stmt.columns) and all(column(f).lower() in stmt.columns for f in info.pk_fields)  # type: ignore[operator]


def unique_sets(info: TableInfo) -> list[tuple[Any, ...]]:
    """The column sets of a table that a row must not share with another: the primary key,
    unique fields, ``unique_together`` and unconditional ``UniqueConstraint``s."""
    opts = info.model._meta
    local = {f.name: f for f in opts.local_concrete_fields}
    sets: list[tuple[Any, ...]] = [tuple(info.pk_fields)]
    sets += [(f,) for f in opts.local_concrete_fields if f.unique and not f.primary_key]
    groups = [tuple(g) for g in opts.unique_together]
    groups += [tuple(c.fields) for c in opts.constraints  # type: ignore[attr-defined]
               if getattr(c, "fields", None) and getattr(c, "condition", None) is None
               and not getattr(c, "expressions", None) and type(c).__name__ == "UniqueConstraint"]
    for names in groups:
        if all(n in local for n in names):
            sets.append(tuple(local[n] for n in names))
    return sets


def key_list(marks: list[str], width: int) -> str:
    """Placeholders for ``IN (...)``: ``%s, %s`` for single-column keys, ``(%s, %s), (%s, %s)``
    for composite ones."""
    if width == 1:
        return ", ".join(marks)
    return ", ".join(f"({', '.join(marks[i:i + width])})" for i in range(0, len(marks), width))


def unqualified(ref: str) -> str:
    """``main.shop_product`` -> ``shop_product``: SQLite's RETURNING takes no schema, and the
    bare name is as valid everywhere else."""
    return split_qualified(ref)[-1]


def column(field: Any) -> str:
    """A concrete field's column name (typed ``str | None`` on ``Field``)."""
    name: str = field.column
    return name
