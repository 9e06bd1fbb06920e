"""Embeddings shared by ingestion, search and chat: the embedders (local model or an OpenAI-compatible endpoint)
and one HNSW index per model."""
