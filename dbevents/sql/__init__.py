"""The SQL recogniser: which statements write which table, and the clause offsets capture needs to
follow and restrict them -- without a general SQL parser, never on the path of a read.

:mod:`.tokens` is the lexical layer (quoting, comments, placeholders, dialects); :mod:`.statement`
recognises one INSERT/UPDATE/DELETE (:func:`write_target`, :func:`analyse`); :mod:`.params` reads
what its parameters say; :mod:`.shapes` scans WITH lists, MySQL's multi-table UPDATE and MERGE;
:mod:`.compound` splits a statement that writes several tables into its writes.
"""

from dbevents.sql.compound import Part, compound_writes
from dbevents.sql.params import params_between, pk_only_where, values_rows
from dbevents.sql.shapes import Merge, MergeClause, analyse_merge
from dbevents.sql.statement import Statement, analyse, write_target
from dbevents.sql.tokens import split_qualified, split_statements, table_names, unquote

__all__ = [
    "Merge", "MergeClause", "Part", "Statement", "analyse", "analyse_merge", "compound_writes", "params_between",
    "pk_only_where", "split_qualified", "split_statements", "table_names", "unquote", "values_rows", "write_target",
]
