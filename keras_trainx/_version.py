"""The package's version, in one place: `setup.cfg` reads it without importing the package."""

__version__ = "0.2.0"
