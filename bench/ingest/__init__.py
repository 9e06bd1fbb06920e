"""``python -m bench.ingest``: ingestion and search next to the bare libraries; see ``__main__``."""
