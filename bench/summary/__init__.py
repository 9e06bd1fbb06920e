"""Summarization benchmark: prompt tokens per turn with summaries against the whole history, the summary job
against the same fold called directly, and beat's summary jobs per minute at 1,000 stale sessions."""
