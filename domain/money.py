"""Money is an integer of minor units with an ISO 4217 currency code."""

from __future__ import annotations

from domain.errors import ValidationFailed


def check_currency(code: str) -> str:
    if not isinstance(code, str) or len(code) != 3 or not code.isalpha() or not code.isupper():
        raise ValidationFailed(f"currency {code!r} must be an ISO 4217 code such as VND or USD", field="currency")
    return code


def check_minor(amount: object, field: str, *, allow_zero: bool = True) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationFailed(f"{field} must be an integer number of minor units", field=field)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationFailed(f"{field} must be {'≥ 0' if allow_zero else '> 0'}", field=field)
    return amount
