"""The quality benchmark: ``python -m bench.quality``."""
