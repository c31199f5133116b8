"""The dbevents benchmark (``make bench``): dbevents against the stock engines, and
django-events-sourcing 0.8 against its own disabled state. See ``bench/run.py``."""
