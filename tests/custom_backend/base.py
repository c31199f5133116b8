"""A third-party engine: a subclass of the stock SQLite engine with behaviour of its own."""

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    custom_marker = "custom engine"

    def get_new_connection(self, conn_params):
        conn = super().get_new_connection(conn_params)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
