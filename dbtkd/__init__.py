"""DB Toolkit backend daemon."""

__version__ = "0.1.0"
