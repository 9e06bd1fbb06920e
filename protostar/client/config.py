"""The client file: the API's URL and a key, written by ``protostar up`` (mode 0600) so that clients on the
same machine find the API with no setup.

``protostar up`` writes ``<data dir>/client.json`` (``.protostar/client.json`` by default);
:func:`find` looks for ``.protostar/client.json`` in a folder and each of its parents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FILENAME = "client.json"
DATA_DIR = ".protostar"


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    api_key: str

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only (it holds a key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            json.dump({"api_url": self.api_url, "api_key": self.api_key}, out)
            out.write("\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        data = json.loads(path.read_text())
        return cls(api_url=str(data["api_url"]), api_key=str(data["api_key"]))


def find(start: Path, data_dir: Path | None = None) -> Path | None:
    """``data_dir/client.json`` when given and present, else ``.protostar/client.json`` in ``start`` or a parent."""
    if data_dir is not None and (data_dir / FILENAME).is_file():
        return data_dir / FILENAME
    for folder in (start, *start.parents):
        candidate = folder / DATA_DIR / FILENAME
        if candidate.is_file():
            return candidate
    return None
