"""The benchmark: anu-watchd and its peers, measured side by side (``python bench/run.py``)."""
