"""Webhooks: tenants' endpoints (``repo``), the address check that keeps deliveries out of the cluster
(``address``), the signature (``sign``) and one delivery attempt (``deliver``). The outbox rows are written by a
job's ending (``protostar.jobs.outbox``); the task shell is ``protostar.worker.tasks.webhooks``."""
