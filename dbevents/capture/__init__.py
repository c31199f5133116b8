"""Capture: the path of a statement from ``cursor.execute()`` to the publisher's queue.

For every statement the execute wrapper (:mod:`.wrapper`) decides whether it writes a watched
table; such a write takes one path -- :mod:`.returning` (RETURNING appended), :mod:`.locking`
(``SELECT ... FOR UPDATE`` and a restricted statement), :mod:`.compound` (several writes in one
statement, MERGE) -- and its rows become pending events (:mod:`.pending`), read and converted by
:mod:`.rows`. At COMMIT (:mod:`.commit`) they are completed, serialized (:mod:`.serialization`),
written to the outbox in the same transaction, and handed to the publisher after it. What
differs between databases is answered in :mod:`.vendors`. See README, "How capture works".

The public name is :class:`CaptureMixin`, for engines of your own.
"""

from dbevents.capture.mixin import CaptureMixin

__all__ = ["CaptureMixin"]
