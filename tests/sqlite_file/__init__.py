"""A Django process on a SQLite *file* database with the outbox on (tests/test_sqlite_locking.py):
the publisher thread marks outbox rows while the application runs its own transactions."""
