"""The real-data evaluation: MovieLens-100K through localrank's real code paths, side by side
with a centralised ALS (``make eval``, ``python -m tools.evaluation``; docs/evaluation.md)."""
