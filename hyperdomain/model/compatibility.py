"""The one check that a file made for a generator (a domain, a latent, a hypernetwork) fits the
generator it is used with: its layout always, its weights (the fingerprint) unless told not to."""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import HyperdomainError

SKIP = "skip this check to use it anyway (check=False, --no-check)"


def origin(meta: Mapping[str, Any]) -> str:
    """`` <file>`` when the object was read from a file, for messages."""
    return f" {meta['file']}" if meta.get("file") else ""


def check_fits(kind: str, meta: Mapping[str, Any], G: Any, mismatch: str | None, *, fingerprint: bool = True,
               made: str = "was trained for", other: str = "not for", hint: str = SKIP) -> None:
    """One line unless the ``kind`` ("domain", "latent", ...) with metadata ``meta`` fits ``G``.

    ``mismatch``: how its layout differs from ``G``'s (``"has 10 numbers ..., but generator ... needs
    6048"``), None when it fits. With ``fingerprint``, the generator weights it records (when it
    records them) must be ``G``'s too.
    """
    name, fp = meta.get("generator", "?"), meta.get("generator_fingerprint")
    if mismatch is not None:
        raise HyperdomainError(f"{kind}{origin(meta)} {mismatch}; it was made for generator {name!r}"
                               + (f" (fingerprint {fp})" if fp else ""))
    if fingerprint and fp and fp != G.fingerprint:
        raise HyperdomainError(f"{kind}{origin(meta)} {made} generator {name!r} (fingerprint {fp}), {other} "
                               f"{G.name!r} (fingerprint {G.fingerprint}); {hint}")
