"""Signed bundles: what the server publishes and every device loads.

A bundle is a manifest (JSON) plus arrays (npy) in a ZIP payload, framed and signed with
Ed25519 over the exact bytes (:mod:`localrank.bundle.container`). Building is deterministic.
"""

from localrank.bundle.contents import (
    Bundle,
    BundleConfig,
    CentralGuarantee,
    build_bundle,
    open_bundle,
)
from localrank.bundle.keys import generate_keypair, load_private_key, load_public_key

__all__ = [
    "Bundle",
    "BundleConfig",
    "CentralGuarantee",
    "build_bundle",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "open_bundle",
]
