from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("event_id", models.CharField(max_length=64)),
                ("transaction_id", models.CharField(max_length=64)),
                ("ordinal", models.PositiveIntegerField()),
                ("service_name", models.CharField(max_length=255)),
                ("routing_key", models.CharField(max_length=255)),
                ("body", models.BinaryField()),
                ("content_type", models.CharField(max_length=100)),
                ("content_encoding", models.CharField(max_length=50)),
                ("headers", models.TextField()),
                ("created_at", models.DateTimeField()),
                ("available_at", models.DateTimeField(blank=True, null=True)),
                ("lease_owner", models.CharField(blank=True, max_length=100, null=True)),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
                ("sent_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "db_table": "dbevents_outbox",
                "verbose_name": "outbox message",
                "indexes": [models.Index(fields=["sent_at", "id"], name="dbevents_outbox_sent_id")],
            },
        ),
    ]
