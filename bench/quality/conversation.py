"""The conversation whose summaries the quality benchmark reads: the owner of a small veterinary clinic asking for
advice over 30 turns and telling ten invented facts in passing (not ``bench.summary``'s bakery: another
speaker, other facts, told in other places of the messages). A fact counts as kept when its keyword is in
the latest summary."""

from __future__ import annotations

import random
from dataclasses import dataclass

FACTS = (
    ("I'm Ines Calloway, and my clinic is called Juniper Paws.", "Calloway"),
    ("We treat about 45 animals a week, mostly cats.", "45"),
    ("Our senior vet is Dr. Baptiste Orrin.", "Orrin"),
    ("The clinic is in the village of Hollowmere.", "Hollowmere"),
    ("Our X-ray machine cost 18,500 euros.", "18,500"),
    ("We have decided to stop doing house calls on Fridays.", "house calls"),
    ("Vaccines come from a wholesaler called Pellbrook Supply.", "Pellbrook"),
    ("Our lease runs until 2031.", "2031"),
    ("My nurse Wren has worked here for nine years.", "Wren"),
    ("A dental check costs 60 euros at our clinic.", "60 euros"),
)

QUESTIONS = (
    "How should I plan staff rotas for a small clinic?",
    "What is a fair way to price routine check-ups?",
    "How do I handle a client who cannot pay right away?",
    "Which numbers should a small clinic review each month?",
    "How can I reduce the time clients wait?",
    "What should a good reminder system for vaccinations do?",
    "How do I choose between leasing and buying equipment?",
    "How can I keep experienced staff from leaving?",
    "What should go into a simple marketing plan for a clinic?",
    "How should I prepare for a busy holiday season?",
    "What are good ways to reduce stock that expires?",
    "How do I write a clear policy for emergency visits?",
    "Is it worth offering a pet health subscription plan?",
    "How should we handle online reviews?",
    "What training should a new receptionist get?",
)


@dataclass(frozen=True)
class Turn:
    n: int  # 1-based
    text: str
    fact: str | None  # the keyword of the fact this turn tells


def turns(count: int = 30, *, seed: int = 11) -> list[Turn]:
    """``count`` user messages; the ten facts told in the first two thirds, each after a question, in a fixed
    random order of turns."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(1, max(len(FACTS), count * 2 // 3) + 1), len(FACTS)))
    told = dict(zip(slots, FACTS, strict=True))
    out = []
    for n in range(1, count + 1):
        question = QUESTIONS[(n - 1) % len(QUESTIONS)]
        fact = told.get(n)
        text = f"{question} For context: {fact[0]}" if fact else question
        out.append(Turn(n, text, fact[1] if fact else None))
    return out
