"""The cheaper customer normalisation gives exactly what the straightforward version gave.

``domain.matching`` memoises its normalisations and takes shortcuts (an ASCII
fast path in the diacritics fold, one regular expression instead of a
character loop, no legal-form pass when no token can start one). Here each
shortcut is compared with the plain version it replaced, and the memoised
functions with their uncached originals.
"""

from __future__ import annotations

import re
import sys
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from domain import matching
from domain.matching import Customer, account_keys, normalise_domain, normalise_name, normalise_tax_id, tax_id_key
from projections.conflicts import _keys

_DOTTED = re.compile(r"(?<![^\W_])(?:[^\W\d_]\.)+[^\W\d_]\.?(?![^\W_])")


def _plain_fold(text: str) -> str:
    for _ in range(4):
        mapped = text.replace("đ", "d").replace("Đ", "d")
        decomposed = unicodedata.normalize("NFKD", mapped)
        stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
        folded = stripped.lower()
        if folded == text:
            break
        text = folded
    return text


def _plain_remove_legal_forms(tokens: list[str]) -> list[str]:
    while True:
        kept: list[str] = []
        i = 0
        while i < len(tokens):
            for phrase in matching._LEGAL_FORM_PHRASES:
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    i += len(phrase)
                    break
            else:
                if tokens[i] not in matching._LEGAL_FORM_TOKENS:
                    kept.append(tokens[i])
                i += 1
        if kept == tokens:
            return kept
        tokens = kept


def _plain_normalise_name(raw: str) -> str:
    text = _plain_fold(raw)
    text = _DOTTED.sub(lambda m: m.group().replace(".", ""), text)
    text = "".join(ch if ch.isalnum() else " " for ch in text)
    tokens = text.split()
    return " ".join(_plain_remove_legal_forms(tokens) or tokens)


def _plain_keys(customer: Customer) -> dict[str, object]:
    plain_tax = normalise_tax_id.__wrapped__
    taxes = {tax_id_key(customer.tax_id, customer.country), plain_tax(customer.tax_id)} - {None}
    return {
        "domain": normalise_domain.__wrapped__(customer.domain),
        "tax": sorted(t for t in taxes if t is not None),
        "name": _plain_normalise_name(customer.name),
        "country": matching.normalise_country(customer.country),
    }


_LEGAL = sorted(matching.LEGAL_FORM_WORDS)
_NAMES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    st.lists(
        st.one_of(
            st.sampled_from([*_LEGAL, "Công", "TY", "Đông", "Á", "S.A.", "J.S.C", "co.", "Ltd.", "ÉLAN", "ﬁ", "x_y"]),
            st.text(alphabet="abcđĐéÉ.-_ 12", min_size=1, max_size=8),
        ),
        max_size=8,
    ).map(" ".join),
)


def test_the_not_alnum_expression_is_not_isalnum_for_every_code_point() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert (matching._NOT_ALNUM.match(char) is not None) == (not char.isalnum()), hex(code)


def test_ascii_text_folds_to_its_lower_case() -> None:
    for code in range(128):
        assert _plain_fold(chr(code) * 2 + "A") == (chr(code) * 2 + "A").lower()


@settings(max_examples=1500, deadline=None)
@given(_NAMES)
def test_normalise_name_is_the_plain_normalisation(raw: str) -> None:
    assert normalise_name(raw) == _plain_normalise_name(raw)
    assert normalise_name.__wrapped__(raw) == _plain_normalise_name(raw)
    assert matching._fold(raw) == _plain_fold(raw)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*_LEGAL, "mot", "thanh", "vien", "cong", "ty", "co", "phan", "tap", "doan", "a"])))
def test_legal_forms_are_removed_as_before(tokens: list[str]) -> None:
    assert matching._remove_legal_forms(list(tokens)) == _plain_remove_legal_forms(list(tokens))


_OPTIONAL = st.one_of(
    st.none(), st.text(max_size=20), st.sampled_from(["VN", "vn ", "DE", "0101234567-001", "www.a.vn"])
)


@settings(max_examples=800, deadline=None)
@given(_NAMES, _OPTIONAL, _OPTIONAL, _OPTIONAL)
def test_memoised_keys_are_the_plain_keys(
    name: str, domain: str | None, tax_id: str | None, country: str | None
) -> None:
    customer = Customer(name=name, domain=domain, tax_id=tax_id, country=country)
    expected = _plain_keys(customer)
    first, second = _keys(customer), _keys(Customer.from_dict(customer.to_dict()))
    assert first == expected
    assert second == expected
    assert first is not second and first["tax"] is not second["tax"]  # documents never share a list
    assert account_keys(customer) == account_keys.__wrapped__(customer)
