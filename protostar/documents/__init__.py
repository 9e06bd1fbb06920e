"""Documents: upload, the rows, and deletion. The API side of ingestion (never imports the parsers)."""
