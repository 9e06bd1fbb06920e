"""Protostar: a self-hostable AI task platform built on Celery."""

__version__ = "0.1.0"
