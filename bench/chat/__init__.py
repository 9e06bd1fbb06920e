"""Chat benchmark: time to first token and relay cost of the chat path next to direct LLM calls."""

TRACE_PREFIX = "bench:chat:trace:"  # the traced worker's notes per job, in Redis (bench.chat.trace_worker)
