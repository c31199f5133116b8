from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.test_app"
    label = "test_app"
    default_auto_field = "django.db.models.AutoField"
