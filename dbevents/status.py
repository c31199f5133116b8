"""What ``dbevents_status`` reports of an outbox, and what ``dbevents_relay --once`` waits for."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from dbevents import conf
from dbevents.outbox import UNROUTABLE, outbox_model, unsent


def stats(alias: str) -> dict[str, Any]:
    """What ``dbevents_status`` shows for one database (three queries)."""
    manager = outbox_model().objects.using(alias)
    now = timezone.now()
    pending = unsent()
    failing = pending & Q(attempts__gt=0)
    sent = Q(sent_at__isnull=False)
    counts = manager.aggregate(
        pending=Count("id", filter=pending),
        oldest=Min("created_at", filter=pending),
        leased=Count("id", filter=pending & Q(available_at__gt=now, lease_owner__isnull=False)),
        retrying=Count("id", filter=failing),
        max_attempts=Max("attempts", filter=failing),
        unroutable=Count("id", filter=sent & Q(last_error__startswith=UNROUTABLE)),
        sent=Count("id", filter=sent),
        dead=Count("id", filter=Q(dead_at__isnull=False)),
        next_attempt=Min("available_at", filter=pending & Q(lease_owner__isnull=True)),
    )
    oldest: datetime | None = counts.pop("oldest")
    next_attempt: datetime | None = counts.pop("next_attempt")
    last = manager.filter(failing).order_by("-id").values_list("last_error", flat=True).first()
    last_dead = manager.filter(dead_at__isnull=False).order_by("-id").values_list("last_error", flat=True).first()
    return {
        "alias": alias,
        "pending": counts["pending"],
        "oldest_pending_age": (now - oldest).total_seconds() if oldest else None,
        "leased": counts["leased"],
        "retrying": counts["retrying"],
        "max_attempts": counts["max_attempts"] or 0,
        "last_error": conf.redact(last or ""),   # rows written before redaction existed, too
        "unroutable": counts["unroutable"],
        "sent": counts["sent"],
        "dead": counts["dead"],
        "last_dead_error": conf.redact(last_dead or ""),
        "next_attempt_in": max(0.0, (next_attempt - now).total_seconds()) if next_attempt else None,
    }
