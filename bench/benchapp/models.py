"""Bench-only models (tables ``benchapp_*``): created by the benchmark with the schema editor,
dropped and recreated at each run, never shared with the test suites."""

from django.db import models


class Item(models.Model):
    """Reads, autocommit creates and saves in one atomic()."""

    name = models.CharField(max_length=100)
    quantity = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField()

    class Meta:
        app_label = "benchapp"


class Parent(models.Model):
    """The parent of the cascade delete."""

    name = models.CharField(max_length=100)

    class Meta:
        app_label = "benchapp"


class Child(models.Model):
    """Bulk paths, QuerySet.update() and the cascaded rows."""

    parent = models.ForeignKey(Parent, on_delete=models.CASCADE, related_name="children")
    name = models.CharField(max_length=100)
    value = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    updated_at = models.DateTimeField()

    class Meta:
        app_label = "benchapp"
