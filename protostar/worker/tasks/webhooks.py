"""The webhook delivery task on the ``webhooks`` queue: a thin shell over ``protostar.webhooks.deliver``.

One message is one attempt. A failed attempt sends the next one with a countdown (its row says when it is due);
a successful one sends the endpoint's deliveries it made due (the receiver is back);
a message that finds its row delivered, given up, held by another attempt or not yet due does nothing. When
PostgreSQL or the broker is away the attempt is left to the reconciler, which sends again any pending delivery
whose send was lost (``jobs.reconcile.resend_webhooks``).
"""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

from protostar.constants import TaskName
from protostar.jobs import faults
from protostar.jobs.dispatch import BROKER_ERRORS
from protostar.settings import WEBHOOK_TIME_LIMITS
from protostar.webhooks.deliver import deliver
from protostar.worker import resources

logger = logging.getLogger(__name__)

_SOFT, _HARD = WEBHOOK_TIME_LIMITS


@shared_task(name=TaskName.WEBHOOK_DELIVER.value, acks_late=True, soft_time_limit=_SOFT, time_limit=_HARD)
def deliver_task(delivery_id: str) -> str:
    res = resources.current()
    did = uuid.UUID(delivery_id)
    try:
        outcome = deliver(res.engine, res.settings, did)
    except Exception as exc:  # boundary: an unavailable database leaves the row to the reconciler
        if (name := faults.dependency(exc)) is None:
            raise
        logger.warning("webhook delivery_id=%s not attempted, %s unavailable: left to the reconciler", did, name)
        return "postponed"
    try:
        if outcome.retry_in is not None:
            res.dispatcher.send_deliveries([did], countdown=outcome.retry_in)
        if outcome.woken:  # the receiver is back: its waiting deliveries now
            res.dispatcher.send_deliveries(list(outcome.woken))
    except Exception as exc:  # boundary: the rows are pending and due; the reconciler sends them again
        if faults.dependency(exc) is None and not isinstance(exc, BROKER_ERRORS):
            raise
        logger.warning("webhook delivery_id=%s next sends not made (the reconciler will): %s", did, type(exc).__name__)
    return outcome.status
