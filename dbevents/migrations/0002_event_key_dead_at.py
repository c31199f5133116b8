from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("dbevents", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="event_key",
            field=models.CharField(blank=True, default="", max_length=191),
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
    ]
