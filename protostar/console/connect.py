"""Find the API and a key: ``--api-url``/``--api-key`` (or ``PROTOSTAR_API_URL``/``PROTOSTAR_API_KEY``), else the
client file ``protostar up`` wrote (``$PROTOSTAR_DATA_DIR/client.json``, or ``.protostar/client.json`` here or
in a parent folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protostar.client import AsyncClient, Client, ClientConfig
from protostar.client import config as client_file
from protostar.settings import get_settings

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="PROTOSTAR_API_URL", help="the API's base URL", show_default=False),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="PROTOSTAR_API_KEY", help="an API key", show_default=False, show_envvar=True),
]
Json = Annotated[bool, typer.Option("--json", help="JSON on stdout, for scripts and pipes")]

NOT_FOUND = (
    "no API to talk to: run `protostar up` (it writes .protostar/client.json), "
    "or set PROTOSTAR_API_URL and PROTOSTAR_API_KEY (or pass --api-url and --api-key)"
)


class NoAPI(Exception):
    pass


def locate(api_url: str | None, api_key: str | None) -> ClientConfig:
    if api_url and api_key:
        return ClientConfig(api_url, api_key)
    found = client_file.find(Path.cwd(), get_settings().data_dir)  # where `protostar up` keeps its data

    if found is None:
        raise NoAPI(NOT_FOUND)
    saved = ClientConfig.load(found)
    return ClientConfig(api_url or saved.api_url, api_key or saved.api_key)


def connect(api_url: str | None, api_key: str | None) -> Client:
    config = locate(api_url, api_key)
    return Client(config.api_url, config.api_key)


def connect_async(api_url: str | None, api_key: str | None) -> AsyncClient:
    config = locate(api_url, api_key)
    return AsyncClient(config.api_url, config.api_key)
