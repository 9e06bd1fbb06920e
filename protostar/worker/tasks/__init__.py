"""Task modules: thin shells over pipelines. Listed in ``protostar.worker.app.TASK_MODULES``."""
