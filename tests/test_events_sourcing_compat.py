"""django-events-sourcing 0.8's own test suite, ported: same models, same settings, same
expected event names, services and payloads -- asserted on the events dbevents would publish.

The originals patch the dispatch function; here ``capture_events`` collects the events inside
Django's ``TestCase`` (whose transaction never commits). The only deliberate difference is the
datetime format: these settings use USE_TZ=True, so DRF renders UTC times with a ``Z``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from django.test import TestCase, override_settings

from dbevents.testing import capture_events, disable_dispatcher, disable_model_obj_dispatcher
from tests.test_app.models import Model1, ModelNoEvent, StatusModel, StatusModel2

DT = datetime(2019, 1, 1, tzinfo=UTC)


def fields(**extra):
    return {"int_field": 10, "char_field": "test", "uuid_field": uuid.uuid4(), "dt_field": DT, **extra}


def calls(events):
    """The (service, event, payload) triples django-events-sourcing passed to dispatch()."""
    return [(e.service_name, e.name, dict(e.payload)) for e in events]


class TestModelDispatcher(TestCase):
    def setUp(self):
        self.m1 = Model1.objects.create(**fields())

    def test_model_1_creation_no_event(self):
        with capture_events() as events:
            ModelNoEvent.objects.create(**fields())
        self.assertEqual(events, [])

    def test_model_1_creation_event_called(self):
        with capture_events() as events:
            m = Model1.objects.create(**fields())
        self.assertEqual(calls(events), [
            ("test_service", "model1__created", {"id": m.id, "int_field": 10, "char_field": "test"}),
        ])

    def test_model_1_updated(self):
        with capture_events() as events:
            self.m1.int_field = 300
            self.m1.save()
        self.assertEqual(calls(events), [
            ("test_service", "model1__updated", {"id": self.m1.id, "int_field": 300, "char_field": "test"}),
        ])

    def test_model_1_deleted(self):
        m1_id = self.m1.id
        with capture_events() as events:
            self.m1.delete()
        self.assertEqual(calls(events), [
            ("test_service", "model1__deleted", {"id": m1_id, "int_field": 10, "char_field": "test"}),
        ])

    @override_settings(MODELS_CRUD_EVENT=[])
    def test_no_event_dispatched(self):
        with capture_events() as events:
            Model1.objects.create(**fields())
        self.assertEqual(events, [])

    @override_settings(MODELS_CRUD_EVENT=[{
        "model": "test_app.Model1", "event_name_prefix": "my_model1",
        "serializer": "tests.test_app.serializers.Model1Serializer",
    }])
    def test_custom_event_name_prefix(self):
        with capture_events() as events:
            m = Model1.objects.create(**fields())
        self.assertEqual(calls(events), [
            ("test_service", "my_model1__created", {"id": m.id, "int_field": 10, "char_field": "test"}),
        ])


class TestStatusModelDispatcher(TestCase):
    def setUp(self):
        self.m1 = StatusModel.objects.create(**fields(status="created"))
        self.m2 = StatusModel2.objects.create(**fields(state="created"))

    def payload(self, obj, **changes):
        data = {"id": obj.id, "int_field": 10, "char_field": "test", "uuid_field": str(obj.uuid_field),
                "dt_field": "2019-01-01T00:00:00Z"}
        data.update(changes)
        return data

    def test_status_dispatched(self):
        with capture_events() as events:
            m = StatusModel.objects.create(**fields(status="created"))
        self.assertEqual(calls(events), [("test_service", "status_model__created", self.payload(m, status="created"))])

    def test_different_status_on_creation(self):
        with capture_events() as events:
            m = StatusModel.objects.create(**fields(status="modified"))
        self.assertEqual(calls(events), [("test_service", "status_model__modified", self.payload(m, status="modified"))])

    def test_status_change_dispatched(self):
        with capture_events() as events:
            self.m1.status = "failed"
            self.m1.int_field = 1000
            self.m1.save()
        self.assertEqual(calls(events), [
            ("test_service", "status_model__failed", self.payload(self.m1, status="failed", int_field=1000)),
        ])

    def test_model_deleted_dispatched(self):
        expected = self.payload(self.m1, status="created")
        with capture_events() as events:
            self.m1.delete()
        self.assertEqual(calls(events), [("test_service", "status_model__deleted", expected)])

    def test_model_different_state_field_name(self):
        with capture_events() as events:
            self.m2.state = "failed"
            self.m2.int_field = 44
            self.m2.save()
        self.assertEqual(calls(events), [
            ("test_service", "status_model2__failed", self.payload(self.m2, state="failed", int_field=44)),
        ])


class TestDisableDispatcherDecorator(TestCase):
    def setUp(self):
        self.m1 = Model1.objects.create(**fields())
        self.m2 = Model1.objects.create(**fields(int_field=1, char_field="test2"))

    @disable_dispatcher()
    def test_all_models_disabled(self):
        with capture_events() as events:
            self.m1.int_field = 1
            self.m1.save()
            self.m1.delete()
            Model1.objects.create(**fields())
        self.assertEqual(events, [])

    @disable_dispatcher(models_list=["test_app.Model1"])
    def test_model_1_disabled(self):
        with capture_events() as events:
            self.m1.int_field = 1
            self.m1.save()
            self.m1.delete()
            StatusModel.objects.create(**fields())
        # The status is blank, so the event is "status_model__" -- as in django-events-sourcing.
        self.assertEqual([e.name for e in events], ["status_model__"])

    def test_model_object_disabled(self):
        with capture_events() as events:
            with disable_model_obj_dispatcher(self.m2):
                self.m1.int_field = 100
                self.m1.save()
                self.m2.int_field = 100
                self.m2.save()
        self.assertEqual(calls(events), [
            ("test_service", "model1__updated", {"id": self.m1.id, "int_field": 100, "char_field": "test"}),
        ])

    def test_model_obj_restored(self):
        with capture_events() as events:
            with disable_model_obj_dispatcher(self.m2):
                self.m1.int_field = 100
                self.m1.save()
                self.m2.int_field = 100
                self.m2.save()
            self.m2.int_field = 0
            self.m2.save()
        self.assertEqual(calls(events), [
            ("test_service", "model1__updated", {"id": self.m1.id, "int_field": 100, "char_field": "test"}),
            ("test_service", "model1__updated", {"id": self.m2.id, "int_field": 0, "char_field": "test2"}),
        ])


@disable_dispatcher()
class TestDisableDispatcherClassDecoratorAllModels(TestCase):
    def test_nothing_dispatched(self):
        with capture_events() as events:
            StatusModel.objects.create(**fields())
        self.assertEqual(events, [])


@disable_dispatcher(models_list=["test_app.Model1"])
class TestDisableDispatcherClassDecoratorModel1(TestCase):
    def test_model_1_not_dispatched(self):
        with capture_events() as events:
            Model1.objects.create(**fields())
        self.assertEqual(events, [])

    def test_status_model_dispatched(self):
        with capture_events() as events:
            StatusModel.objects.create(**fields())
        self.assertEqual(len(events), 1)
