"""Django 6.1 database-level ``on_delete``: the database deletes (``DB_CASCADE``) or updates
(``DB_SET_NULL``) the children of a deleted row itself, without the ORM's collector; their
events are produced all the same, read before the DELETE in its transaction."""

from __future__ import annotations

import pytest
from django.db import connection, models, transaction

from dbevents.testing import capture_events

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not hasattr(models, "DB_CASCADE"), reason="DB_CASCADE is Django 6.1+"),
]


def _tree():
    from tests.shop.models import Blurb, Book, Chapter, Publisher

    pub, other = Publisher.objects.create(name="p"), Publisher.objects.create(name="other")
    books = [Book.objects.create(publisher=pub, title=t) for t in ("a", "b")]
    chapters = [Chapter.objects.create(book=b, number=1) for b in books]
    blurb = Blurb.objects.create(publisher=pub, text="great")
    Book.objects.create(publisher=other, title="untouched")
    return pub, books, chapters, blurb


def _summary(events):
    return sorted((e.name, e.pk) for e in events)


@pytest.mark.parametrize("how", ["instance", "queryset", "raw sql"])
def test_children_deleted_and_nulled_by_the_database_get_events(how):
    from tests.shop.models import Blurb, Book, Chapter, Publisher

    pub, books, chapters, blurb = _tree()
    pub_pk = pub.pk
    with capture_events() as events:
        if how == "instance":
            pub.delete()
        elif how == "queryset":
            Publisher.objects.filter(name="p").delete()
        else:
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM shop_publisher WHERE name = %s", ["p"])
    assert _summary(events) == sorted(
        [("publisher__deleted", pub_pk), ("blurb__updated", blurb.pk)]
        + [("book__deleted", b.pk) for b in books] + [("chapter__deleted", c.pk) for c in chapters]
    )
    assert Book.objects.count() == 1 and Chapter.objects.count() == 0
    assert Blurb.objects.get().publisher_id is None
    nulled = events.named("blurb__updated")[0]
    assert nulled.payload["publisher"] is None and nulled.payload["text"] == "great"
    deleted_book = [e for e in events.named("book__deleted") if e.pk == books[0].pk][0]
    assert deleted_book.payload["title"] == "a"
    # Children before parents, as the ORM's own collector deletes them.
    names = [e.name for e in events]
    assert names.index("chapter__deleted") < names.index("book__deleted") < names.index("publisher__deleted")


def test_rolled_back_delete_emits_nothing():
    pub, *_ = _tree()
    with capture_events() as events:
        with pytest.raises(RuntimeError), transaction.atomic():
            pub.delete()
            raise RuntimeError
    assert events == []
