"""Settings of the dbevents demo project: everything a project needs to publish its writes.

``run.py`` sets ``DBEVENTS_DEMO_DB`` (a fresh SQLite file) before Django loads these settings;
``AMQP_URI`` picks the broker (default: kombu's in-process ``memory://`` broker).
"""

import os

SECRET_KEY = "dbevents-demo"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "rest_framework",  # the events' payloads come from DRF ModelSerializers
    "dbevents",
    "shop",
]

DATABASES = {
    "default": {
        # The only change to a stock project: a dbevents engine wraps Django's sqlite3 backend.
        "ENGINE": "dbevents.backends.sqlite3",
        "NAME": os.environ.get("DBEVENTS_DEMO_DB", "demo.sqlite3"),
    }
}

# Events go to the topic exchange "<SERVICE_NAME>.events", exactly as a nameko service's would.
SERVICE_NAME = "shop"
NAMEKO_CONFIG = {"AMQP_URI": os.environ.get("AMQP_URI", "memory://")}

MODELS_CRUD_EVENT = [
    {"model": "shop.Customer"},                           # customer__created / __updated / __deleted
    {"model": "shop.Order", "status_field": "status"},    # order__<status>, order__deleted
    {"model": "shop.Item", "event_name_prefix": "line"},  # line__created / __updated / __deleted
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dbevents": {"handlers": ["console"], "level": "WARNING"}},
}
