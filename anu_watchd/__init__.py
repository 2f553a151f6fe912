"""anu-watchd: wake the collector once per task result, durably."""

__version__ = "0.1.0"
