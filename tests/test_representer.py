"""The compiled representer of generated serializers gives exactly DRF's payload, for every kind
of field and for values and None alike; fields it does not know are left to DRF."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest
from django.test import override_settings

from dbevents.registry import get_registry
from dbevents.representer import compile_representer
from dbevents.testing import capture_events
from tests.test_app.models import AllFields, Related, Uncompiled

pytestmark = pytest.mark.django_db(transaction=True)

ENTRIES = [{"model": "test_app.AllFields"}, {"model": "test_app.Uncompiled"}, {"model": "test_app.Related"}]


def full(related: Related) -> dict:
    return dict(
        big=-(2 ** 40), small=-7, positive=7, floating=1.5, decimal=Decimal("12.3450"), flag=True, maybe=False,
        choice="b", text="multi\nline ✓", email="a@example.com", slug="a-slug", url="https://example.com/x?y=1",
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"), day=datetime.date(2026, 12, 3),
        moment=datetime.datetime(2026, 12, 3, 10, 11, 12, 345678, tzinfo=datetime.UTC),
        clock=datetime.time(10, 11, 12, 5), span=datetime.timedelta(days=1, seconds=5, microseconds=7),
        blob=b"\x00\xffbytes", data={"nested": [1, "two", None, {"3": 3.5}]}, ip="2001:db8::1",
        path="/tmp/x", related=related, one=related,
    )


def test_the_compiled_representer_gives_drfs_payload_for_every_field_kind():
    with override_settings(MODELS_CRUD_EVENT=ENTRIES):
        entry = get_registry().entries[AllFields]
        serializer_class = entry.serializer_class()
        assert compile_representer(serializer_class(), AllFields) is not None
        related = Related.objects.create(name="r")

        def check(write, count):
            with capture_events() as events:
                write()
            payloads = [e.payload for e in events if e.model == "test_app.AllFields"]
            assert len(payloads) == count
            stored = {row.pk: row for row in AllFields.objects.all()}
            for payload in payloads:
                # What DRF makes of the same row, read back by the ORM.
                assert payload == dict(serializer_class(stored[payload["id"]]).data), payload

        check(lambda: [AllFields.objects.create(**full(related)), AllFields.objects.create()], 2)
        check(lambda: AllFields.objects.update(text="changed", maybe=None), 2)


def test_fields_it_does_not_know_are_left_to_drf():
    with override_settings(MODELS_CRUD_EVENT=ENTRIES):
        entry = get_registry().entries[Uncompiled]
        assert compile_representer(entry.serializer_class()(), Uncompiled) is None
        related = Related.objects.create(name="r")
        row = Uncompiled.objects.create(upload="files/a.txt")
        row.tags.add(related)
        with capture_events() as events:
            Uncompiled.objects.filter(pk=row.pk).update(upload="files/b.txt")
        (payload,) = [e.payload for e in events if e.model == "test_app.Uncompiled"]
        assert payload == dict(entry.serializer_class()(Uncompiled.objects.get(pk=row.pk)).data)
        assert payload["tags"] == [related.pk]
