"""The HTTP API. Never imports worker-only code: tasks are sent by name through the dispatcher."""
