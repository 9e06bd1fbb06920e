"""Jobs: the row that is the truth, the events streamed to callers, and how a job is sent to its queue."""
