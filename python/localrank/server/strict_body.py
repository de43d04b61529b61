"""What a POST body must be before the batch checks see it: ``application/json``, UTF-8 without
a byte order mark, and JSON without duplicate keys or lone surrogates.

Why each rule:

- Content type: a browser may POST ``text/plain`` (or a form) cross-site without a CORS
  preflight; ``application/json`` forces one, so no web page can make a visitor's browser
  submit reports.
- UTF-8 only: ``json.loads`` on bytes guesses UTF-16/UTF-32 and skips a BOM, so two encodings of
  one document would both be accepted; the wire contract has one.
- Duplicate keys: ``json.loads`` keeps the last, other parsers the first, so a proxy, a log
  reader and the server could each see a different report.
- Lone surrogates (``"\\ud800"``): not Unicode, so no UTF-8 encoder (the schema validator, the
  database driver) can take them; refused here, before anything downstream raises.

:class:`IngestError`, the refusal every step of ingest raises, is defined here because the body
is the first step; :mod:`localrank.server.ingest` parses every batch with :func:`strict_json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["IngestError", "check_content_type", "short_repr", "strict_json"]

_UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")


class IngestError(Exception):
    """A refused batch: the HTTP status, a short machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def check_content_type(header: str | None) -> None:
    """Refuse (415) anything but ``application/json``, with no charset or ``utf-8``."""
    if header is None:
        raise IngestError(
            415, "content_type", "Content-Type: missing; expected application/json"
        )
    media, *params = (part.strip() for part in header.split(";"))
    if media.lower() != "application/json":
        raise IngestError(
            415,
            "content_type",
            f"Content-Type: expected application/json, got {short_repr(header)}",
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise IngestError(
                415,
                "content_type",
                f"Content-Type: charset must be utf-8 (or absent), got {short_repr(header)}",
            )


def strict_json(body: bytes) -> Any:
    """The document in ``body``, or an :class:`IngestError` (400) naming what is wrong."""
    if body.startswith(_UTF8_BOM):
        raise IngestError(
            400, "malformed_json", "body: starts with a byte order mark; expected UTF-8 without one"
        )
    # JSON in UTF-8 never holds a NUL byte (control characters must be escaped), while ASCII
    # text in UTF-16/32 is half NULs, and their BOMs are not UTF-8 at all.
    if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4]:
        raise IngestError(
            400, "malformed_json", "body: looks like UTF-16 or UTF-32; expected UTF-8"
        )
    try:
        text = body.decode("utf-8")  # strict: also refuses surrogates encoded as UTF-8 bytes
    except UnicodeDecodeError as e:
        raise IngestError(
            400, "malformed_json", f"body: not valid UTF-8 at byte {e.start}: {e.reason}"
        ) from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except IngestError:
        raise
    except (ValueError, RecursionError) as e:
        raise IngestError(400, "malformed_json", f"body: not valid JSON: {e}") from None
    _refuse_lone_surrogates(doc)
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise IngestError(
                    400,
                    "duplicate_key",
                    f"body: the key {short_repr(key)} appears twice in an object",
                )
            seen.add(key)
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _refuse_lone_surrogates(doc: Any) -> None:
    """Walk every key and string (iteratively: the parser already bounded the depth)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if not key.isascii() and _SURROGATE.search(key):
                    _surrogate(path, "a key")
                stack.append((value, (*path, key)))
        elif isinstance(node, list):
            stack.extend((value, (*path, str(i))) for i, value in enumerate(node))
        elif isinstance(node, str) and not node.isascii() and _SURROGATE.search(node):
            _surrogate(path, "the string")


def _surrogate(path: tuple[str, ...], what: str) -> None:
    # The path may itself hold the surrogate (a key): escape it, the answer must be UTF-8.
    where = "/".join(path).encode("utf-8", "backslashreplace").decode() or "body"
    raise IngestError(
        400,
        "lone_surrogate",
        f"{where}: {what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
        "which is not Unicode",
    )


def short_repr(value: object) -> str:
    """``repr(value)``, cut to 60 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
