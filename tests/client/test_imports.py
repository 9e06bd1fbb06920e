"""The client stands alone: importing it loads nothing but httpx (and what httpx itself loads), the standard
library and its own modules; the API never loads the client or the CLI."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout))


def test_the_client_needs_only_httpx_and_the_standard_library() -> None:
    baseline = loaded("httpx")
    client = loaded("protostar.client")
    third_party = {name.split(".")[0] for name in client - baseline} - set(sys.stdlib_module_names)
    assert third_party == {"protostar"}
    ours = {name for name in client if name.split(".")[0] == "protostar"}
    assert all(name == "protostar" or name.startswith("protostar.client") for name in ours), sorted(ours)


def test_the_api_loads_neither_the_client_nor_the_cli() -> None:
    api = loaded("protostar.api.app")
    assert not {name for name in api if name.startswith(("protostar.client", "protostar.console"))}


def test_the_api_loads_no_ocr_nor_parser() -> None:
    api = loaded("protostar.api.app")
    heavy = ("rapidocr_onnxruntime", "cv2", "pypdfium2", "unstructured", "protostar.ingest")
    assert not {name for name in api if name.startswith(heavy)}
