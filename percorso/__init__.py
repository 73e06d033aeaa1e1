"""percorso: an open-source customer journey platform."""

__version__ = "0.1.0"
