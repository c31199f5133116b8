"""The models of django-events-sourcing 0.8's own test app, unchanged, so its expectations
can be checked against dbevents."""

from django.db import models


class ModelNoEvent(models.Model):
    int_field = models.IntegerField()
    char_field = models.CharField(max_length=100)
    uuid_field = models.UUIDField()
    dt_field = models.DateTimeField()


class Model1(models.Model):
    int_field = models.IntegerField()
    char_field = models.CharField(max_length=100)
    uuid_field = models.UUIDField()
    dt_field = models.DateTimeField()


STATUS_CHOICES = (("created", "Created"), ("modified", "Modified"), ("finished", "Finished"), ("failed", "Failed"))


class StatusModel(models.Model):
    status = models.CharField(max_length=100, choices=STATUS_CHOICES)
    int_field = models.IntegerField()
    char_field = models.CharField(max_length=100)
    uuid_field = models.UUIDField()
    dt_field = models.DateTimeField()


class StatusModel2(models.Model):
    state = models.CharField(max_length=100, choices=STATUS_CHOICES)
    int_field = models.IntegerField()
    char_field = models.CharField(max_length=100)
    uuid_field = models.UUIDField()
    dt_field = models.DateTimeField()


class Related(models.Model):
    name = models.CharField(max_length=20)


class AllFields(models.Model):
    """One field of every kind a generated serializer has (the compiled representer's test)."""

    big = models.BigIntegerField(null=True)
    small = models.SmallIntegerField(default=0)
    positive = models.PositiveIntegerField(default=0)
    floating = models.FloatField(null=True)
    decimal = models.DecimalField(max_digits=12, decimal_places=4, null=True)
    flag = models.BooleanField(default=False)
    maybe = models.BooleanField(null=True)
    choice = models.CharField(max_length=10, choices=[("a", "A"), ("b", "B")], default="a")
    text = models.TextField(blank=True)
    email = models.EmailField(blank=True)
    slug = models.SlugField(blank=True)
    url = models.URLField(blank=True)
    ident = models.UUIDField(null=True)
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    span = models.DurationField(null=True)
    blob = models.BinaryField(null=True)
    data = models.JSONField(null=True)
    ip = models.GenericIPAddressField(null=True)
    path = models.FilePathField(path="/tmp", blank=True)
    created = models.DateTimeField(auto_now_add=True)
    related = models.ForeignKey(Related, null=True, on_delete=models.SET_NULL)
    one = models.OneToOneField(Related, null=True, on_delete=models.SET_NULL, related_name="one_of")


class Uncompiled(models.Model):
    """Fields the compiled representer leaves to DRF: a file (its attribute is a FieldFile) and a
    many-to-many relation (read with a query)."""

    upload = models.FileField(blank=True)
    tags = models.ManyToManyField(Related, related_name="tagged")
