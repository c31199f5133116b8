"""Settings of the test project. DBEVENTS_TEST_DB picks the database: sqlite (default),
postgresql or mysql (MariaDB); the servers are the local ones described in the README."""

import os

DB = os.environ.get("DBEVENTS_TEST_DB", "sqlite")

SECRET_KEY = "dbevents-tests"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "dbevents",
    "tests.test_app",
    "tests.shop",
]

_DATABASES = {
    "sqlite": {
        "ENGINE": "dbevents.backends.sqlite3",
        # In-memory (shared between the test's threads): fast, and nothing left on disk.
        "NAME": ":memory:",
    },
    "postgresql": {
        "ENGINE": "dbevents.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": os.environ.get("DBEVENTS_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DBEVENTS_TEST_PG_PORT", "5432"),
    },
    "mysql": {
        "ENGINE": "dbevents.backends.mysql",
        "NAME": "test",
        "USER": "root",
        "PASSWORD": "",
        "HOST": os.environ.get("DBEVENTS_TEST_MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DBEVENTS_TEST_MYSQL_PORT", "3306"),
        "OPTIONS": {"charset": "utf8mb4"},
    },
}
DATABASES = {"default": _DATABASES[DB]}
# A relay started by a test in another process works on the test database of its parent.
if os.environ.get("DBEVENTS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DBEVENTS_TEST_DB_NAME"]
# A second SQLite database: each alias is captured on its own.
DATABASES["other"] = {"ENGINE": "dbevents.backends.sqlite3", "NAME": ":memory:"}
# Another engine wrapped both documented ways: the generic route and a mixin module.
DATABASES["wrapped"] = {
    "ENGINE": "dbevents.backends.generic",
    "DBEVENTS_WRAPPED_ENGINE": "tests.custom_backend",
    "NAME": ":memory:",
}
DATABASES["mixin"] = {"ENGINE": "tests.custom_backend_dbevents", "NAME": ":memory:"}

SERVICE_NAME = "test_service"
# The in-process broker; the RabbitMQ tests switch to DBEVENTS_TEST_AMQP_URI.
NAMEKO_CONFIG = {"AMQP_URI": "memory://"}
AMQP_URI_RABBITMQ = os.environ.get("DBEVENTS_TEST_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
if os.environ.get("DBEVENTS_TEST_RELAY_AMQP_URI"):
    NAMEKO_CONFIG = {"AMQP_URI": os.environ["DBEVENTS_TEST_RELAY_AMQP_URI"]}
if os.environ.get("DBEVENTS_TEST_LEASE"):
    DBEVENTS_OUTBOX_LEASE = float(os.environ["DBEVENTS_TEST_LEASE"])
if os.environ.get("DBEVENTS_TEST_CONFIRM_TIMEOUT"):
    DBEVENTS_CONFIRM_TIMEOUT = float(os.environ["DBEVENTS_TEST_CONFIRM_TIMEOUT"])

MODELS_CRUD_EVENT = [
    {"model": "test_app.Model1", "serializer": "tests.test_app.serializers.Model1Serializer"},
    {"model": "test_app.StatusModel", "status_field": "status"},
    {"model": "test_app.StatusModel2", "status_field": "state"},
    {"model": "shop.Customer"},
    {"model": "shop.Order", "serializer": "tests.shop.serializers.OrderSerializer"},
    {"model": "shop.Item", "event_name_prefix": "line"},
    {"model": "shop.Product"},
    {"model": "shop.Review"},
    {"model": "shop.Payment", "status_field": "status"},
    {"model": "shop.Refund", "service_name": "billing"},
    {"model": "shop.Coupon"},
    {"model": "shop.Counter"},
    {"model": "shop.Place"},
    {"model": "shop.Restaurant"},
    {"model": "shop.Stock", "serializer": "tests.shop.serializers.StockSerializer"},
    {"model": "shop.Shop"},
    {"model": "shop.Stall"},
    {"model": "shop.Kiosk"},
]
try:  # Django 6.1 database-level on_delete (tests/shop/models.py)
    from django.db.models import DB_CASCADE  # noqa: F401
except ImportError:
    pass
else:
    MODELS_CRUD_EVENT += [{"model": f"shop.{name}"} for name in ("Publisher", "Book", "Chapter", "Blurb")]

DBEVENTS_PUBLISH_RETRY_DELAY = 0.05
DBEVENTS_PUBLISH_RETRY_MAX_DELAY = 0.2
DBEVENTS_PUBLISH_RETRIES = 3

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dbevents": {"handlers": ["console"], "level": "WARNING"}},
}

# The same database through Django's stock engine (tests/test_transparency.py compares the two).
_STOCK_ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}
DATABASES["stock"] = {**DATABASES["default"], "ENGINE": _STOCK_ENGINES[DB], "TEST": {"MIRROR": "default"}}
