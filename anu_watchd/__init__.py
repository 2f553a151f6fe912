"""anu-watchd: wake the collector once per task result, durably.

The producer's call is ``anu_watchd.write_result(events_dir, doc)`` (see
``anu_watchd.producer``); importing the package has no side effects.
"""

from anu_watchd.producer import result_document, write_result

__version__ = "0.1.0"
__all__ = ["__version__", "result_document", "write_result"]
