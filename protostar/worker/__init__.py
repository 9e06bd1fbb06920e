"""Celery workers: the app, per-process resources, the job shell and the task modules."""
