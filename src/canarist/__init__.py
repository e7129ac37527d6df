"""canarist: immutable releases and progressive delivery on your own machines."""

__version__ = "0.1.0"
