"""dbevents: every write to a registered Django model becomes a nameko event, published after
COMMIT. Importing this package is cheap on purpose: Django imports it whenever it loads a
dbevents ENGINE."""

__version__ = "0.1.0"
