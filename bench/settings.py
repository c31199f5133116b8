"""Settings of the benchmark worker processes; ``bench/run.py`` sets the environment.

``BENCH_LIB`` picks the library under test: ``dbevents`` (aliases ``default`` with the stock
engine and ``events`` with the dbevents engine, on the same database) or ``des``
(django-events-sourcing 0.8, in its own virtualenv, on the stock engine). ``BENCH_DB`` picks the
database: ``postgresql``, ``mysql`` (MariaDB) or ``sqlite`` (the file ``BENCH_SQLITE_PATH``).
"""

import os

LIB = os.environ.get("BENCH_LIB", "dbevents")
DB = os.environ.get("BENCH_DB", "sqlite")

SECRET_KEY = "dbevents-bench"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "rest_framework",
    "dbevents" if LIB == "dbevents" else "django_events_sourcing",
    "bench.benchapp",
]

_STOCK = {
    "postgresql": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_PG_NAME", "test"),
        "USER": os.environ.get("BENCH_PG_USER", "postgres"),
        "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
    },
    "mysql": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ.get("BENCH_MYSQL_NAME", "test"),
        "USER": os.environ.get("BENCH_MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("BENCH_MYSQL_PASSWORD", ""),
        "HOST": os.environ.get("BENCH_MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_MYSQL_PORT", "3306"),
        "OPTIONS": {"charset": "utf8mb4"},
    },
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_SQLITE_PATH", "/tmp/dbevents-bench.sqlite3"),
        "OPTIONS": {"timeout": 30},
    },
}[DB]

DATABASES = {"default": dict(_STOCK)}
if LIB == "dbevents":
    # The same database through the dbevents engine: the ENGINE prefix swap a user makes.
    DATABASES["events"] = {**_STOCK, "ENGINE": _STOCK["ENGINE"].replace("django.db.backends.", "dbevents.backends.")}

SERVICE_NAME = os.environ.get("BENCH_SERVICE", "dbevents_bench")
AMQP_URI = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
NAMEKO_CONFIG = {"AMQP_URI": AMQP_URI}

MODELS_CRUD_EVENT = [
    {"model": "benchapp.Item"},
    {"model": "benchapp.Parent"},
    {"model": "benchapp.Child"},
]

if os.environ.get("BENCH_DELIVERY"):
    DBEVENTS_DELIVERY = os.environ["BENCH_DELIVERY"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "dbevents": {"handlers": ["console"], "level": "WARNING"},
        "django_events_sourcing": {"handlers": ["console"], "level": "WARNING"},
    },
}
