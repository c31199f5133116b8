"""Settings for Django's test suite (``tests/runtests.py --settings``), stock or through dbevents.

``DBEVENTS_TEST_DB`` picks the database (sqlite, postgresql, mysql), ``DBEVENTS_SUITE_ENGINE``
the engines (``stock``: Django's own; ``dbevents``: ``dbevents.backends.*`` with every concrete
model registered by :mod:`tests.django_suite.apps`). Everything else is Django's own example
settings (``tests/test_sqlite.py``).
"""

import os

DB = os.environ.get("DBEVENTS_TEST_DB", "sqlite")
WRAPPED = os.environ.get("DBEVENTS_SUITE_ENGINE", "dbevents") == "dbevents"
_PACKAGE = "dbevents.backends" if WRAPPED else "django.db.backends"
_VENDOR = {"sqlite": "sqlite3", "postgresql": "postgresql", "mysql": "mysql"}[DB]
_SERVERS = {
    "sqlite": {},
    "postgresql": {
        "NAME": "test", "USER": "postgres",
        "HOST": os.environ.get("DBEVENTS_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DBEVENTS_TEST_PG_PORT", "5432"),
    },
    "mysql": {
        "NAME": "test", "USER": "root", "PASSWORD": "",
        "HOST": os.environ.get("DBEVENTS_TEST_MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DBEVENTS_TEST_MYSQL_PORT", "3306"),
        "OPTIONS": {"charset": "utf8mb4"},
    },
}


def _database(alias: str) -> dict:
    settings = {"ENGINE": f"{_PACKAGE}.{_VENDOR}", **_SERVERS[DB]}
    if DB != "sqlite":
        # Names of their own: never the test databases of dbevents' own suite.
        settings["TEST"] = {"NAME": f"dbevents_suite_{alias}", "CHARSET": "utf8mb4" if DB == "mysql" else None}
    return settings


DATABASES = {"default": _database("default"), "other": _database("other")}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

if WRAPPED:
    # tests/runtests.py replaces INSTALLED_APPS; scripts/django_suite.py adds these to its list.
    DBEVENTS_SUITE_APPS = ["rest_framework", "dbevents", "tests.django_suite"]
    SERVICE_NAME = "django_suite"
    NAMEKO_CONFIG = {"AMQP_URI": "memory://"}
    DBEVENTS_TRANSPORT = "tests.django_suite.transport.CountingTransport"
    MODELS_CRUD_EVENT: list = []  # filled with every concrete model by tests.django_suite.apps
