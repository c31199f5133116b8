import json

from django.db import migrations, models


def fill_event_keys(apps, schema_editor):
    """Rows still unsent from before this migration get their row key, so that they keep their
    place in their row's order."""
    from dbevents.events import event_key

    outbox = apps.get_model("dbevents", "OutboxMessage").objects.using(schema_editor.connection.alias)
    last = 0
    while True:
        rows = list(outbox.filter(sent_at__isnull=True, event_key="", id__gt=last).order_by("id")
                    .values_list("id", "headers")[:1000])
        if not rows:
            return
        for pk, headers in rows:
            outbox.filter(pk=pk).update(event_key=event_key(json.loads(headers)))
        last = rows[-1][0]


class Migration(migrations.Migration):
    dependencies = [("dbevents", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="event_key",
            # A database default too: processes still running the previous version insert rows
            # without the column during a rolling deploy.
            field=models.CharField(blank=True, default="", db_default="", max_length=191),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="dead_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(fields=["event_key", "sent_at", "id"], name="dbevents_outbox_key_unsent"),
        ),
        migrations.RunPython(fill_event_keys, migrations.RunPython.noop, elidable=True),
    ]
