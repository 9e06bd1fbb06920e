"""One small tree of errors, each carrying the HTTP status and the stable code callers see.

    ProtostarError (500 internal)
    ├── BadRequest (400 bad_request)
    │   └── ValidationFailed (422 validation_failed)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── TooManyRequests (429 too_many_requests): over a per-tenant quota; carries ``retry_after`` seconds
    ├── Unavailable (503 unavailable)
    │   ├── BrokerUnavailable (503 broker_unavailable)
    │   └── DependencyTimeout (503 dependency_timeout): the API's request deadline passed (a dependency is slow)
    ├── JobFailed (500 job_failed): raised inside workers; its code and message are recorded on the job
    │   ├── InputRejected (422 input_rejected): the input can never succeed, do not retry
    │   │   └── OutOfMemory (413 out_of_memory): the work needed more memory than a worker may use
    │   ├── Transient (503 transient): worth retrying with backoff
    │   │   ├── LLMUnavailable (503 llm_unavailable): the LLM could not be reached, or its stream broke, past retries
    │   │   └── LLMBusy (503 llm_busy): no turn at the LLM under the limits now; carries ``retry_in`` and ``limit``
    │   ├── LLMFailed (502 llm_failed): the LLM refused the request, sent a malformed stream, or missed a deadline
    │   ├── TimeLimitExceeded (504 time_limit): the job ran past its soft time limit and was stopped
    │   ├── WorkerLost (500 worker_lost): the reconciler gave up on a job whose heartbeat stopped
    │   └── Cancelled (409 cancelled): a running job saw its cancel request
    └── ServiceError (500 service_error): an embedded service could not start or stop
        └── PortInUse (500 port_in_use)

Routes raise these; one handler renders ``{"error": {"code", "message"}}``. Task shells catch everything at
their boundary and record ``code`` and ``message`` on the job row.
"""

from __future__ import annotations

from typing import ClassVar


class ProtostarError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ProtostarError):
    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    status = 422
    code = "validation_failed"


class Unauthorized(ProtostarError):
    status = 401
    code = "unauthorized"


class Forbidden(ProtostarError):
    status = 403
    code = "forbidden"


class NotFound(ProtostarError):
    status = 404
    code = "not_found"


class Conflict(ProtostarError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ProtostarError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ProtostarError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ProtostarError):
    """Over a per-tenant quota: nothing was accepted; try again after ``retry_after`` seconds (the
    ``Retry-After`` header)."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ProtostarError):
    status = 503
    code = "unavailable"


class BrokerUnavailable(Unavailable):
    code = "broker_unavailable"


class DependencyTimeout(Unavailable):
    code = "dependency_timeout"


class JobFailed(ProtostarError):
    code = "job_failed"


class InputRejected(JobFailed):
    status = 422
    code = "input_rejected"


class OutOfMemory(InputRejected):
    status = 413
    code = "out_of_memory"


class Transient(JobFailed):
    status = 503
    code = "transient"


class LLMUnavailable(Transient):
    """The LLM server went away (refused connections, 5xx, a stream cut mid-answer): it is being restarted or
    replaced, so the job is retried as a whole, with backoff, instead of failing for good."""

    code = "llm_unavailable"


class LLMBusy(Transient):
    """No turn at the LLM now: a limit of :mod:`protostar.llm.limits` is reached. The job shell gives the worker
    thread back and sends the job again in about ``retry_in`` seconds (when a turn is likely); ``limit`` names
    the limit in the words callers see ("calls in flight, this tenant")."""

    code = "llm_busy"

    def __init__(self, message: str, *, retry_in: float, limit: str) -> None:
        super().__init__(message)
        self.retry_in = retry_in
        self.limit = limit


class LLMFailed(JobFailed):
    status = 502
    code = "llm_failed"


class TimeLimitExceeded(JobFailed):
    status = 504
    code = "time_limit"


class WorkerLost(JobFailed):
    code = "worker_lost"


class Cancelled(JobFailed):
    status = 409
    code = "cancelled"


class ServiceError(ProtostarError):
    code = "service_error"


class PortInUse(ServiceError):
    code = "port_in_use"
