"""Channel-conflict identity and kinds (the detection itself is a projection)."""

from __future__ import annotations

from uuid import uuid5

from domain.ids import PRM_NAMESPACE

PARTNER_VS_PARTNER = "partner_vs_partner"
DIRECT_VS_PARTNER = "direct_vs_partner"
SALE_OUTSIDE_REGISTRATION = "sale_outside_registration"
CONFLICT_KINDS = (PARTNER_VS_PARTNER, DIRECT_VS_PARTNER, SALE_OUTSIDE_REGISTRATION)


def conflict_id(kind: str, first: str, second: str) -> str:
    """The same pair of parties always gives the same conflict id (idempotent detection).

    ``first`` is the protected/earlier party (a registration id), ``second``
    the later one (a registration, opportunity or sale id).
    """
    if kind not in CONFLICT_KINDS:
        raise ValueError(f"unknown conflict kind {kind!r}")
    return "C-" + uuid5(PRM_NAMESPACE, f"conflict:{kind}:{first}:{second}").hex[:16]
