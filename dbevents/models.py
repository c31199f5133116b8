"""The transactional outbox table (``DBEVENTS_DELIVERY = "outbox"``).

One row per event, written in the same transaction as the data it describes, so the two commit or
roll back together. The row holds the message exactly as it goes on the wire (serialized body,
content type, headers), so publishing it later needs no model, serializer or settings of the
app that wrote it. Capture never sees this table: it cannot be registered in MODELS_CRUD_EVENT
(check ``dbevents.E013``) and the committing process writes it on a bare driver cursor.
"""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """An event waiting to be published (``sent_at`` is NULL) or already published.

    A pending row is *available* when ``available_at`` is NULL or past: the committing process
    leases the rows it writes for ``DBEVENTS_OUTBOX_LEASE`` seconds (it publishes them itself
    right after COMMIT), a relay leases the rows it claims, and a failed attempt makes the row
    wait for its back-off. ``dbevents_relay`` publishes available rows in ``id`` order, and a row
    only once every earlier row of the same ``event_key`` (model and primary key) was sent.

    A *dead* row (``dead_at`` set) is never published: its event could not be encoded for the
    broker; ``last_error`` says why and ``body`` holds a diagnostic rendering of its payload.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=64)
    transaction_id = models.CharField(max_length=64)
    ordinal = models.PositiveIntegerField()
    #: nameko "service" whose exchange ``<service_name>.events`` the event goes to.
    service_name = models.CharField(max_length=255)
    #: the event name (``order__created``), the AMQP routing key.
    routing_key = models.CharField(max_length=255)
    body = models.BinaryField()
    content_type = models.CharField(max_length=100)
    content_encoding = models.CharField(max_length=50)
    #: the AMQP headers, as JSON.
    headers = models.TextField()
    created_at = models.DateTimeField()
    available_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    #: ``<model label>:<primary key>``: the events of one row are published in ``id`` order.
    event_key = models.CharField(max_length=191, blank=True, default="", db_default="")
    dead_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "dbevents_outbox"
        indexes = [
            models.Index(fields=["sent_at", "id"], name="dbevents_outbox_sent_id"),
            # "Is an earlier event of this row unsent?" (every claim asks it per row): all three of
            # its conditions in one index, so that no planner -- not even one without statistics
            # on a just-filled outbox -- prefers the (sent_at, id) range, which is quadratic.
            models.Index(fields=["event_key", "sent_at", "id"], name="dbevents_outbox_key_unsent"),
        ]
        verbose_name = "outbox message"

    def __str__(self) -> str:
        state = "sent" if self.sent_at else "dead" if self.dead_at else "pending"
        return f"{self.service_name}.events/{self.routing_key} id={self.event_id} ({state})"
