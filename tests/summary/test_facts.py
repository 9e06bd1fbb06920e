"""The facts a session summary keeps word for word (protostar.summary.facts)."""

from __future__ import annotations

from protostar.llm.tokens import estimate
from protostar.summary import facts


def test_statements_with_names_numbers_or_decisions_are_facts() -> None:
    message = (
        "Hi there. My accountant is called Oskar Lind. We sell about 300 loaves a day. "
        "We decided to close on Sundays. Can you help me plan the week? thanks a lot"
    )
    assert facts.stated(message) == [
        "My accountant is called Oskar Lind.",
        "We sell about 300 loaves a day.",
        "We decided to close on Sundays.",
    ]


def test_questions_long_pasted_text_and_small_talk_are_not() -> None:
    assert facts.stated("What is a good price for 12 rolls? How do I ask Maria?") == []
    assert facts.stated("Thanks, that helps. I see.") == []
    pasted = " ".join(["The 2019 report says"] + ["word"] * 50) + "."
    assert facts.stated(pasted) == []


def test_a_title_does_not_end_the_sentence() -> None:
    assert facts.stated("Our vet is Dr. Baptiste Orrin. Thanks.") == ["Our vet is Dr. Baptiste Orrin."]


def test_number_words_count_and_a_capital_only_at_the_start_does_not() -> None:
    assert facts.stated("We open at half past six.") == ["We open at half past six."]
    assert facts.stated("Bread is nice.") == []


def test_one_message_gives_at_most_a_few() -> None:
    message = " ".join(f"Shop {n} is in Town{n}." for n in range(20))
    assert len(facts.stated(message)) == facts.PER_MESSAGE


def test_merge_keeps_each_fact_once_and_drops_the_oldest_past_the_budget() -> None:
    old = ["Our rent is 3,200 euros.", "My name is Dana."]
    new = ["my name is Dana", "We have 14 staff."]
    assert facts.merge(old, new, budget=1000) == ["Our rent is 3,200 euros.", "My name is Dana.", "We have 14 staff."]
    budget = sum(estimate(f) + 2 for f in ["My name is Dana.", "We have 14 staff."])
    assert facts.merge(old, new, budget=budget) == ["My name is Dana.", "We have 14 staff."]


def test_compose_and_split_round_trip() -> None:
    content = facts.compose(["A is 1.", "B is 2."], "The user asked about prices.")
    assert content.startswith(facts.HEADER)
    assert facts.split(content) == (["A is 1.", "B is 2."], "The user asked about prices.")
    assert facts.split("An older summary without facts.") == ([], "An older summary without facts.")
    assert facts.compose([], "Only text.") == "Only text."
    assert facts.split(facts.compose(["A is 1."], "")) == (["A is 1."], "")
