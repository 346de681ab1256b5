"""The package version: one place, read by the package root and by the files it writes."""

__version__ = "0.2.0"
