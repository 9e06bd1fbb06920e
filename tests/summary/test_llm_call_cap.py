"""A document summary has a cap on LLM calls: a text that needs more is refused before the first call."""

from __future__ import annotations

import pytest

from protostar.errors import InputRejected
from protostar.settings import Settings
from protostar.summary import fold
from protostar.summary.pipeline import _check_calls


def test_a_document_over_the_llm_call_cap_is_refused_with_the_reason() -> None:
    settings = Settings(summary_max_llm_calls=5)
    chunks = [f"chunk {n} " + "words " * 150 for n in range(60)]
    with pytest.raises(InputRejected) as refused:
        _check_calls(chunks, fold.DOCUMENT, settings=settings)
    assert "too long to summarize" in refused.value.message
    assert "above the limit of 5 (PROTOSTAR_SUMMARY_MAX_LLM_CALLS)" in refused.value.message


def test_a_document_within_the_cap_passes() -> None:
    _check_calls(["a short text"] * 3, fold.DOCUMENT, settings=Settings(summary_max_llm_calls=1))
