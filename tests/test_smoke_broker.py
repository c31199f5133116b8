import pytest
from django.db import transaction

from tests.conftest import names
from tests.shop.models import Customer


@pytest.mark.django_db(transaction=True)
def test_create_reaches_rabbitmq(broker):
    with transaction.atomic():
        c = Customer.objects.create(name="Ann")
    got = broker.drain()
    assert names(got) == ["customer__created"]
    assert got[0].payload == {"id": c.pk, "name": "Ann", "email": ""}
    assert got[0].exchange == "test_service.events"
