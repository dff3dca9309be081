"""The one place the version of fm2s-tile is written (pyproject reads it from here)."""

__version__ = "0.1.0"
