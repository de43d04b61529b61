"""Code that runs on the phone: the engine façade, ranking, the profile, guardrails,
explanations, the SQLite store, the reports a device prepares and the sync client.

Nothing here imports :mod:`localrank.server` (pyproject.toml's import contracts).
"""
