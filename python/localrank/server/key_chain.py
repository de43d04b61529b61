"""``GET /v1/keys``: the key chain devices follow when the signing key rotates.

The chain is a file the operator keeps (``--key-chain``; ``localrank keygen --rotate-from``
appends transitions to it, :func:`~localrank.bundle.trust.sign_retirement` makes
retirements). It is checked when the server starts: every statement must verify and follow
the one before, and the signing key must be the chain's current key, or devices following
the chain would refuse every bundle the server publishes. Without a chain file the answer is
an empty chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request, Response

from localrank.bundle.keys import load_private_key
from localrank.bundle.trust import CHAIN_SCHEMA, KeyTrust, read_chain
from localrank.errors import InputError, LocalrankError

__all__ = ["key_chain_document", "key_chain_router"]


def key_chain_document(chain: str | Path | None, signing_key: bytes) -> bytes:
    """The JSON body of ``GET /v1/keys`` for the chain file ``chain`` (None: empty)."""
    statements: list[dict[str, Any]] = [] if chain is None else read_chain(chain)
    if statements:
        signing = load_private_key(signing_key).public_key()
        try:
            first = json.loads(statements[0]["statement"])
            root = base64.b64decode(first.get("old") or first.get("signer"))
            trust = KeyTrust(Ed25519PublicKey.from_public_bytes(root))
            trust.apply(statements)
        except (LocalrankError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"key_chain: {chain}: {e}") from e
        if trust.current.public_bytes_raw() != signing.public_bytes_raw():
            raise InputError(
                f"key_chain: {chain}: its current key is not the signing key (--key): devices "
                "following the chain would refuse every bundle"
            )
    return json.dumps(
        {"schema": CHAIN_SCHEMA, "statements": statements}, sort_keys=True, separators=(",", ":")
    ).encode()


def key_chain_router(config: Any) -> APIRouter:
    """The route, for ``app.include_router``; ``config`` is the server's ServerConfig."""
    body = key_chain_document(getattr(config, "key_chain", None), config.key_bytes())
    etag = hashlib.sha256(body).hexdigest()
    router = APIRouter()

    @router.get("/v1/keys", summary="The signing-key chain (key transitions and retirements)")
    async def get_keys(request: Request) -> Response:
        headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match", "").strip() == f'"{etag}"':
            return Response(status_code=304, headers=headers)
        return Response(content=body, media_type="application/json", headers=headers)

    return router
