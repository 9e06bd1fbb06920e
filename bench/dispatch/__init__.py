"""``python -m bench.dispatch``: the submit path and job shell next to bare Celery; see ``__main__``."""
