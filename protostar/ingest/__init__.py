"""Document ingestion: sniff the type of an upload, parse it into elements, and cut those into chunks."""
