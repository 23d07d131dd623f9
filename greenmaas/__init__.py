"""greenmaas: measured energy, carbon and cost per model and per request."""

__version__ = "0.1.0"
