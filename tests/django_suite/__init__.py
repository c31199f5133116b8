"""The transparency gate: Django's own test suite run through the dbevents engines.

``make test-django`` (``scripts/django_suite.py``) runs a fixed list of Django's ORM test apps
with the stock engines' settings and with ``dbevents.backends.*``, every concrete model
registered, and fails when a test that passes on the stock engine fails through dbevents. This
package holds what the dbevents run adds to Django's test project: its settings, an app that
registers every model, and a transport that counts the events it is given.
"""
