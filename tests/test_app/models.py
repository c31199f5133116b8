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
