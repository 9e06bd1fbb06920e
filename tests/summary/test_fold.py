"""Map-reduce folding, pure: packing in order within the budget, rounds until one summary is left."""

from __future__ import annotations

import pytest

from protostar.llm.tokens import clip, estimate, split
from protostar.summary.fold import fold, pack, planned_calls


def test_split_cuts_between_words_within_the_budget() -> None:
    text = " ".join(f"word{n}" for n in range(500))
    pieces = split(text, 50)
    assert len(pieces) > 1
    assert all(estimate(p) <= 55 for p in pieces)
    assert " ".join(pieces) == text


def test_pack_keeps_the_order_and_fills_groups_up_to_the_budget() -> None:
    pieces = [f"message {n} " + "x " * 20 for n in range(30)]
    groups = pack(pieces, 120)
    assert len(groups) > 1
    assert all(estimate(g) <= 130 for g in groups)
    joined = "\n\n".join(groups)
    assert [joined.index(f"message {n} ") for n in range(30)] == sorted(
        joined.index(f"message {n} ") for n in range(30)
    )


def test_text_that_fits_is_one_call() -> None:
    calls: list[str] = []

    def summarize(text: str) -> str:
        calls.append(text)
        return "S"

    assert fold(["User: hi", "Assistant: hello"], budget=500, limit=50, summarize=summarize) == ("S", 1)
    assert calls == ["User: hi\n\nAssistant: hello"]


def test_long_text_is_mapped_then_reduced_to_one_summary() -> None:
    seen: list[str] = []
    stages: list[str] = []

    def summarize(text: str) -> str:
        seen.append(text)
        return f"summary of {len(text)} chars " + "y " * 40

    pieces = [f"Turn {n}: " + "lorem ipsum " * 30 for n in range(40)]
    summary, count = fold(
        pieces, budget=300, limit=60, summarize=summarize, progress=lambda stage, done, total: stages.append(stage)
    )
    assert summary.startswith("summary of")
    assert count == len(seen) > 2
    assert stages[0] == "map" and stages[-1] == "reduce" and "summarize" not in stages
    assert all(estimate(t) <= 310 for t in seen)  # no call over the budget


def test_every_summary_is_clipped_to_the_limit() -> None:
    summary, _ = fold(["a b c"], budget=500, limit=20, summarize=lambda _: "word " * 200)
    assert estimate(summary) <= 20
    assert clip("short", 20) == "short"


def test_a_budget_that_cannot_hold_two_summaries_is_refused() -> None:
    with pytest.raises(ValueError, match="two summaries"):
        fold(["x"], budget=100, limit=60, summarize=lambda t: t)


@pytest.mark.parametrize("pieces", [1, 7, 40, 300])
def test_the_planned_calls_bound_the_calls_made(pieces: int) -> None:
    """The document summary is refused before its first call from this plan (PROTOSTAR_SUMMARY_MAX_LLM_CALLS)."""
    texts = [f"chunk {n} " + "words " * 60 for n in range(pieces)]
    planned = planned_calls(texts, budget=400, limit=50)
    _, made = fold(texts, budget=400, limit=50, summarize=lambda text: "summary " * 60)
    assert made <= planned
