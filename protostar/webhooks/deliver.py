"""One attempt of one webhook delivery: claim the row, check the address, POST the signed body, record.

Plain and Celery-free (the task shell in ``protostar.worker.tasks.webhooks`` sends the retry). Idempotent: an
attempt runs only after claiming the row (``pending``, due, not held by another attempt's lease), and records
its outcome only while the row still has its attempt number, so a duplicate message (a retry's countdown and
the reconciler's resend) does nothing. A ``2xx`` is success; anything else (another status, a refused or
timed-out connection, an address now refused) is retried with capped, jittered backoff
(``PROTOSTAR_WEBHOOKS_RETRY_BASE`` / ``_CAP``) until the event is ``PROTOSTAR_WEBHOOKS_MAX_AGE`` old, then the
delivery is ``failed``. A success makes the endpoint's deliveries waiting out a backoff due at once. ``410
Gone`` disables the endpoint. ``last_error`` says which way it failed in a few fixed words (no exception text,
no address); the log line carries the delivery and endpoint ids only (never the URL, which may hold a token,
nor the secret).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, or_, select, text, update

from protostar import __version__, backoff
from protostar.constants import DeliveryStatus
from protostar.db.models import WebhookDelivery, WebhookEndpoint
from protostar.settings import Settings
from protostar.webhooks import deadline
from protostar.webhooks.address import AddressRefused, Target, check
from protostar.webhooks.sign import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature

logger = logging.getLogger(__name__)

PENDING = DeliveryStatus.PENDING.value
EARLY = 1.0  # seconds a countdown message may arrive before its row is due (another clock) and still run
MIN_RETRY_IN = 0.5  # seconds: the shortest wait before another attempt (full jitter may draw 0)
GONE = 410
WAKE_BATCH = 100  # waiting deliveries of an endpoint made due by one success


@dataclass(frozen=True)
class Outcome:
    status: str  # "succeeded", "retry", "failed", or "skipped" (not this message's to run)
    retry_in: float | None = None  # "retry": seconds until the next attempt is due
    woken: tuple[uuid.UUID, ...] = ()  # "succeeded": the endpoint's waiting deliveries made due now, to send


@dataclass(frozen=True)
class _Claimed:
    id: uuid.UUID
    attempt: int
    event_type: str
    payload: dict[str, Any]
    age: float  # seconds since the event
    url: str
    secret: str
    enabled: bool
    endpoint_id: uuid.UUID


def lease(settings: Settings) -> float:
    """Seconds an attempt holds its row: its HTTP call's deadlines twice over, and some."""
    return 2 * (settings.webhooks_connect_timeout + settings.webhooks_read_timeout) + 10


def deliver(
    engine: Engine, settings: Settings, delivery_id: uuid.UUID, *, transport: httpx.BaseTransport | None = None
) -> Outcome:
    """Make one attempt at ``delivery_id`` if it is due and free; what came of it."""
    claimed = _claim(engine, delivery_id, lease(settings))
    if claimed is None:
        return Outcome("skipped")
    if not claimed.enabled:
        return _record(engine, settings, claimed, None, "the endpoint is disabled", give_up=True)
    body = json.dumps(claimed.payload, separators=(",", ":"), ensure_ascii=False).encode()
    code: int | None = None
    error: str | None = None
    try:
        target = check(claimed.url, allow_private=settings.webhooks_allow_private)
        code = post(target, body, _headers(claimed, body), settings=settings, transport=transport)
        if not 200 <= code < 300:
            error = f"the receiver answered HTTP {code}"
    except AddressRefused as exc:
        error = exc.message
    except httpx.ConnectTimeout:
        error = "connecting to the receiver timed out"
    except httpx.TimeoutException:
        error = "the receiver did not answer in time"
    except httpx.ConnectError:
        error = "could not connect to the receiver (refused, unreachable or TLS failed)"
    except httpx.HTTPError:
        error = "the connection to the receiver failed or its answer was not HTTP"
    return _record(engine, settings, claimed, code, error)


class _Quiet(logging.Filter):
    """Drops httpx's own request log lines made by a delivery: they carry the receiver's URL, which may hold a
    token (the delivery's line carries its ids instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_calling, "on", False)


_calling = threading.local()
logging.getLogger("httpx").addFilter(_Quiet())


def post(
    target: Target, body: bytes, headers: dict[str, str], *, settings: Settings, transport: httpx.BaseTransport | None
) -> int:
    """POST ``body`` to the checked address (the URL's host kept as the Host header and the TLS server name);
    the answer's status. No redirect is followed, no proxy from the environment used, the answer's body not read;
    the whole call ends within the connect and read timeouts together (``webhooks.deadline``)."""
    url = httpx.URL(target.url)
    pinned = url.copy_with(host=target.ip)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    timeout = httpx.Timeout(
        connect=settings.webhooks_connect_timeout,
        read=settings.webhooks_read_timeout,
        write=settings.webhooks_read_timeout,
        pool=settings.webhooks_connect_timeout,
    )
    total = settings.webhooks_connect_timeout + settings.webhooks_read_timeout  # the whole call, however paced
    used = transport or deadline.transport(total)
    _calling.on = True
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, transport=used) as client:
            request = client.build_request(
                "POST", pinned, content=body, headers={**headers, "Host": url.netloc.decode()}, extensions=extensions
            )
            response = client.send(request, stream=True)
            response.close()
            return response.status_code
    finally:
        _calling.on = False


def _headers(claimed: _Claimed, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"Protostar-Webhooks/{__version__}",
        SIGNATURE_HEADER: signature(claimed.secret, int(time.time()), body),
        DELIVERY_HEADER: str(claimed.id),
        EVENT_HEADER: claimed.event_type,
    }


def _claim(engine: Engine, delivery_id: uuid.UUID, lease_seconds: float) -> _Claimed | None:
    d = WebhookDelivery
    due = text("now() + make_interval(secs => :early)").bindparams(early=EARLY)
    free = or_(d.locked_until.is_(None), d.locked_until < text("now()"))
    stmt = (
        update(d)
        .where(d.id == delivery_id, d.status == PENDING, d.next_attempt_at <= due, free)
        .values(
            attempts=d.attempts + 1,
            locked_until=text("now() + make_interval(secs => :lease)").bindparams(lease=lease_seconds),
        )
        .returning(
            d.id, d.attempts, d.endpoint_id, d.event_type, d.payload, text("extract(epoch from now() - created_at)")
        )
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).first()
        if row is None:
            return None
        endpoint = conn.execute(
            select(WebhookEndpoint.url, WebhookEndpoint.secret, WebhookEndpoint.enabled).where(
                WebhookEndpoint.id == row[2]
            )
        ).first()
    if endpoint is None:  # deleted meanwhile: its deliveries went with it
        return None
    return _Claimed(
        id=row[0],
        attempt=row[1],
        endpoint_id=row[2],
        event_type=row[3],
        payload=row[4],
        age=float(row[5]),
        url=endpoint[0],
        secret=endpoint[1],
        enabled=bool(endpoint[2]),
    )


def _record(
    engine: Engine,
    settings: Settings,
    claimed: _Claimed,
    code: int | None,
    error: str | None,
    *,
    give_up: bool = False,
) -> Outcome:
    d = WebhookDelivery
    ours = (d.id == claimed.id, d.attempts == claimed.attempt, d.status == PENDING)
    values: dict[str, Any] = {"last_status_code": code, "last_error": error, "locked_until": None}
    retry_in: float | None = None
    if error is None:
        values.update(status=DeliveryStatus.SUCCEEDED.value, delivered_at=text("now()"))
        outcome = "succeeded"
    else:
        retry_in = max(
            MIN_RETRY_IN,
            backoff.delay(claimed.attempt, base=settings.webhooks_retry_base, cap=settings.webhooks_retry_cap),
        )
        if give_up or code == GONE or claimed.age + retry_in > settings.webhooks_max_age:
            values["status"] = DeliveryStatus.FAILED.value
            outcome, retry_in = "failed", None
        else:
            values["next_attempt_at"] = text("now() + make_interval(secs => :wait)").bindparams(wait=retry_in)
            outcome = "retry"
    with engine.begin() as conn:
        recorded = conn.execute(update(d).where(*ours).values(**values).returning(d.id)).first() is not None
        woken = _wake(conn, claimed) if recorded and error is None else ()
        if recorded and code == GONE:
            conn.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == claimed.endpoint_id)
                .values(enabled=False, disabled_reason="the receiver answered 410 Gone; register it again to resume")
            )
    ids = (claimed.id, claimed.endpoint_id, claimed.event_type, claimed.attempt, outcome, code)
    if retry_in is None:
        logger.info("webhook delivery_id=%s endpoint_id=%s event=%s attempt=%d: %s (HTTP status %s)", *ids)
    else:
        logger.info(
            "webhook delivery_id=%s endpoint_id=%s event=%s attempt=%d: %s (HTTP status %s), next attempt in %.1f s",
            *ids,
            retry_in,
        )
    if not recorded:
        return Outcome("skipped")
    return Outcome(outcome, retry_in, woken)


def _wake(conn: Connection, claimed: _Claimed) -> tuple[uuid.UUID, ...]:
    """The receiver answers again: its endpoint's deliveries waiting out a backoff are due now (at most
    ``WAKE_BATCH``; each success wakes the next ones), so a receiver that was down gets its backlog within
    seconds of its first success rather than at each delivery's next try (up to ``webhooks_retry_cap`` away)."""
    d = WebhookDelivery
    waiting = (
        select(d.id)
        .where(
            d.endpoint_id == claimed.endpoint_id,
            d.status == PENDING,
            d.next_attempt_at > text("now()"),
            or_(d.locked_until.is_(None), d.locked_until < text("now()")),
        )
        .order_by(d.created_at)
        .limit(WAKE_BATCH)
        .with_for_update(skip_locked=True)
    )
    stmt = update(d).where(d.id.in_(waiting.scalar_subquery())).values(next_attempt_at=text("now()")).returning(d.id)
    return tuple(conn.scalars(stmt))
