from rest_framework import serializers

from tests.shop.models import Order, Stock


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ("id", "customer", "number", "status", "total", "paid")


class StockSerializer(serializers.ModelSerializer):
    class Meta:
        model = Stock
        fields = ("warehouse", "sku", "quantity")
