"""A small shop: the models the dbevents suite writes to."""

import uuid

from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(blank=True)


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    number = models.IntegerField()
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    created = models.DateTimeField(auto_now_add=True)
    paid = models.BooleanField(default=False)


class Item(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    sku = models.CharField(max_length=20)
    qty = models.IntegerField(default=1)


class Product(models.Model):
    sku = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=100)
    stock = models.IntegerField(default=0)
    data = models.JSONField(default=dict)


class Review(models.Model):
    product = models.ForeignKey(Product, on_delete=models.SET_NULL, null=True, related_name="reviews")
    text = models.CharField(max_length=200)


class Payment(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, null=True)
    status = models.CharField(max_length=20, default="pending")
    amount = models.IntegerField(default=0)


class Refund(models.Model):
    amount = models.IntegerField()


class Coupon(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    code = models.CharField(max_length=20)


class Counter(models.Model):
    """No relations and no signals: Django deletes these on its fast path."""
    value = models.IntegerField()


class Note(models.Model):
    """Not registered: writes to it produce nothing."""
    text = models.CharField(max_length=100)


class Place(models.Model):
    name = models.CharField(max_length=100)
    address = models.CharField(max_length=100, default="")


class Restaurant(Place):
    serves_pizza = models.BooleanField(default=False)


class Pizzeria(Restaurant):
    oven = models.CharField(max_length=20, default="wood")


class Bar(Place):
    """A registered parent (Place) with an unregistered child: its events are Place events."""
    happy_hour = models.BooleanField(default=False)


class Tagged(models.Model):
    """A second concrete parent whose key is not Place's."""

    tag_id = models.AutoField(primary_key=True)
    tag = models.CharField(max_length=20, default="")


class Shop(Place, Tagged):
    """Multiple inheritance: its shop_tagged row has a key of its own (tagged_ptr)."""

    opens = models.IntegerField(default=9)


class Stall(Shop):
    """Below Shop: its shop_tagged row is reached through Shop's link (an intermediate table)."""

    pitch = models.IntegerField(default=0)


class Kiosk(Place):
    """A child with its own primary key: place_ptr is a plain parent link."""

    code = models.IntegerField(primary_key=True)


class Stock(models.Model):
    """A composite primary key (Django 5.2): events carry the key as a list."""
    pk = models.CompositePrimaryKey("warehouse", "sku")
    warehouse = models.CharField(max_length=10)
    sku = models.CharField(max_length=20)
    quantity = models.IntegerField(default=0)


if hasattr(models, "DB_CASCADE"):  # Django 6.1: the database itself deletes or updates children

    class Publisher(models.Model):
        name = models.CharField(max_length=100)

    class Book(models.Model):
        publisher = models.ForeignKey(Publisher, on_delete=models.DB_CASCADE)
        title = models.CharField(max_length=100)

    class Chapter(models.Model):
        book = models.ForeignKey(Book, on_delete=models.DB_CASCADE)
        number = models.IntegerField()

    class Blurb(models.Model):
        publisher = models.ForeignKey(Publisher, null=True, on_delete=models.DB_SET_NULL)
        text = models.CharField(max_length=100)
