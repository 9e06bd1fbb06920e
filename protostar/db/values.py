"""Values PostgreSQL accepts: text without what it refuses, vectors in pgvector's text form."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def clean_text(value: str) -> str:
    """Text PostgreSQL accepts: no NUL (``text`` cannot hold one), no lone surrogates (not valid UTF-8)."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def vector_literal(vector: npt.NDArray[np.floating[Any]]) -> str:
    """pgvector's text form, ``[0.1,0.2,...]``; ``repr`` of the float32 values read back exactly."""
    return "[" + ",".join(map(repr, vector.tolist())) + "]"
