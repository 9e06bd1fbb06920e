"""The LLM, as every capability uses it: an OpenAI-compatible streaming client with deadlines and retries
(``stream``), fair-use limits kept in Redis (``limits``), prompt token estimates (``tokens``), and the one call
that chat and summaries both make (``call``)."""
