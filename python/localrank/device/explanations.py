"""Why an offer was shown: machine-readable reasons and one human sentence.

Reasons are the score's own terms, so they are honest by construction and sum to the score:
``interest`` (w_dot·u·E), ``segment`` (w_prior·prior), ``popular`` (the offer's bias),
``near`` (distance decay), ``context`` (meant for this kind of app) and ``fatigue`` (negative:
recent impressions). The sentence names at most two *kinds* of
reason ("Near you", "Popular with people who like Sci-Fi") and never the person, a time, a
place or any precise inferred fact.

With learned cohorts (``learned``) the same two terms read differently, and still name nothing
precise: the segment term is "Popular with people whose taste is like yours" (the cohort's
prior), the interest term "Similar to offers you engaged with" (the fold-in ``u`` against the
offer's factors); neither names the offer or the time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REASON_KINDS", "Reason", "sentence"]

REASON_KINDS = ("interest", "segment", "popular", "near", "context", "fatigue")


@dataclass(frozen=True)
class Reason:
    kind: str
    weight: float
    category: str | None = None  # the display label a reason refers to, if any
    learned: bool = False  # the term comes from learned cohorts and factors

    def phrase(self) -> str:
        if self.kind == "near":
            return "Near you"
        if self.kind == "segment" and self.learned:
            return "Popular with people whose taste is like yours"
        if self.kind == "interest" and self.learned:
            return "Similar to offers you engaged with"
        if self.kind == "segment":
            return (
                f"Popular with people who like {self.category}"
                if self.category
                else "Popular with people like you"
            )
        if self.kind == "interest":
            return (
                f"Matches your interest in {self.category}"
                if self.category
                else ("Matches your interests")
            )
        if self.kind == "context":
            return "Suited to this app"
        return "Popular right now"


def sentence(reasons: list[Reason]) -> str:
    """One sentence from the strongest positive reasons (at most two)."""
    positive = [r for r in sorted(reasons, key=lambda r: -r.weight) if r.weight > 0]
    if not positive:
        return "Popular right now."
    first = positive[0].phrase()
    if len(positive) > 1 and positive[1].phrase() != first:
        second = positive[1].phrase()
        return f"{first}, and {second[0].lower()}{second[1:]}."
    return f"{first}."
