"""The user CLI on :mod:`protostar.client`: ``protostar ingest|search|ask|chat|jobs|documents``.

The server commands (``up``, ``api``, ``worker``…) stay in :mod:`protostar.cli`, which hands these over here.
"""

from __future__ import annotations

from collections.abc import Sequence

import typer

from protostar.client import APIError, ClientError, TransportError
from protostar.console import ask, documents, ingest, jobs
from protostar.console.connect import NoAPI
from protostar.console.output import fail

app = typer.Typer(
    name="protostar",
    help="Talk to a running Protostar: ingest documents, search, ask, chat, watch jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals hold the API key
)
app.command()(ingest.ingest)
app.command()(documents.search)
app.command()(ask.ask)
app.command()(ask.chat)
app.add_typer(jobs.jobs, name="jobs")
app.add_typer(documents.documents, name="documents")


def run(argv: Sequence[str]) -> int:
    """Run one command; the exit status: 0 done, 1 the API or a job failed, 2 a usage or setup problem."""
    try:
        app(args=list(argv), prog_name="protostar")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except NoAPI as exc:
        fail(str(exc))
        return 2
    except TransportError as exc:
        fail(f"{exc.message} (is the API running? `protostar up` starts it)")
        return 1
    except (APIError, ClientError) as exc:
        fail(str(exc))
        return 1
    return 0
