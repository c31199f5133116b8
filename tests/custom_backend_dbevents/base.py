"""The documented mixin route: the custom engine plus dbevents capture, in a module of the
project's own (ENGINE = "tests.custom_backend_dbevents")."""

from dbevents.capture import CaptureMixin
from tests.custom_backend import base


class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
    pass
