from rest_framework import serializers

from tests.shop.models import Order


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ("id", "customer", "number", "status", "total", "paid")
