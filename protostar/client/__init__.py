"""A Python client of Protostar's HTTP API (v1). It needs nothing but ``httpx`` and the standard library, and
imports nothing else of Protostar, so it works with the package installed with ``--no-deps`` next to httpx.

    from protostar.client import Client

    with Client("http://127.0.0.1:8000", "ps_...") as client:
        client.upload("report.pdf", wait=True)
        session = client.sessions.create()
        stream = client.chat(session, "What does the report say about jobs?")
        for piece in stream:
            print("\\n" if isinstance(piece, Reset) else piece, end="")
        print(stream.answer().sources)

:class:`AsyncClient` is the same with ``await`` (``async for`` over a chat stream).
"""

from protostar.client.aio import AsyncChatStream, AsyncClient
from protostar.client.calls import Retry
from protostar.client.config import ClientConfig
from protostar.client.errors import (
    APIError,
    AuthError,
    ClientError,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    NotSupported,
    RateLimited,
    ServerError,
    TransportError,
    WaitTimeout,
)
from protostar.client.models import (
    Accepted,
    Answer,
    Collection,
    Document,
    Event,
    Hit,
    Job,
    Message,
    MessageAccepted,
    Page,
    Progress,
    Reset,
    Session,
    Source,
    Upload,
)
from protostar.client.sync import ChatStream, Client

__all__ = [
    "APIError",
    "Accepted",
    "Answer",
    "AsyncChatStream",
    "AsyncClient",
    "AuthError",
    "ChatStream",
    "Client",
    "ClientConfig",
    "ClientError",
    "Collection",
    "Conflict",
    "Document",
    "Event",
    "Hit",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "Message",
    "MessageAccepted",
    "NotFound",
    "NotSupported",
    "Page",
    "Progress",
    "RateLimited",
    "Reset",
    "Retry",
    "ServerError",
    "Session",
    "Source",
    "TransportError",
    "Upload",
    "WaitTimeout",
]
