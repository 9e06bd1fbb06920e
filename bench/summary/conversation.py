"""A generated conversation: a bakery owner asking an assistant for advice over many turns, telling it facts
about the business along the way (which a summary should keep: the benchmark counts those that survive)."""

from __future__ import annotations

import random
from dataclasses import dataclass

FACTS = [
    ("My name is Dana Whitlock and I run a bakery called Ember and Rye in Quillby.", "Ember and Rye"),
    ("We have 14 employees, and our head baker is Tomasz Ruiz.", "Tomasz"),
    ("Our rent is 3,200 euros a month.", "3,200"),
    ("We open at half past six in the morning, six days a week.", "six"),
    ("Our best seller is a cardamom knot that sells for 4 euros.", "cardamom"),
    ("We want to open a second shop in Marrow next spring.", "Marrow"),
    ("Our flour comes from Hallam Mills.", "Hallam"),
    ("Our deck oven is from 2009 and it keeps breaking down.", "oven"),
    ("My business partner is my sister Priya.", "Priya"),
    ("Last year we made 410,000 euros in revenue.", "410,000"),
]

QUESTIONS = [
    "What should I ask a bank before taking a loan?",
    "How do I price a new pastry?",
    "How can I reduce food waste at the end of the day?",
    "What is a good way to schedule early shifts?",
    "How should I train a new apprentice baker?",
    "Which numbers should I check every week?",
    "How do I handle a customer complaint about a stale loaf?",
    "Should we sell coffee as well as bread?",
    "How can we get more customers on weekday afternoons?",
    "What should a simple marketing plan for a small shop include?",
    "How do I negotiate a better price with a supplier?",
    "What are the risks of opening a second location?",
    "How much stock of flour should we keep?",
    "How do I keep good staff from leaving?",
    "Is it worth offering wholesale bread to cafes?",
    "How should we plan for the holiday season?",
    "What should go into an employee handbook?",
    "How do I decide when to replace equipment?",
    "How can a bakery use social media well?",
    "What insurance does a small bakery need?",
]


@dataclass(frozen=True)
class Turn:
    n: int  # 1-based
    text: str
    fact: str | None  # the keyword of the fact this turn tells, if any


def turns(count: int, *, seed: int = 7) -> list[Turn]:
    """``count`` user messages: questions in a shuffled order, with the facts spread over the first half."""
    rng = random.Random(seed)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    rng.shuffle(questions)
    every = max(1, (count // 2) // len(FACTS))
    told = {1 + i * every: fact for i, fact in enumerate(FACTS) if 1 + i * every <= count}
    out = []
    for n in range(1, count + 1):
        fact = told.get(n)
        text = f"{fact[0]} {questions[n - 1]}" if fact else questions[n - 1]
        out.append(Turn(n, text, fact[1] if fact else None))
    return out
