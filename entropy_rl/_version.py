"""The package version, in a leaf module: importing it loads nothing else (toy/warmup.py records it)."""

__version__ = "0.1.0"
