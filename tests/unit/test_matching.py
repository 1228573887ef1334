"""Unit and property tests for customer-account matching (channel.md)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.matching import (
    FREE_MAIL_DOMAINS,
    NAME_SIMILARITY_THRESHOLD,
    Customer,
    MatchEvidence,
    match_accounts,
    name_similarity,
    normalise_domain,
    normalise_name,
    normalise_tax_id,
    tax_id_key,
)


def vn(name: str, **kwargs: str | None) -> Customer:
    return Customer(name=name, country="VN", **kwargs)


# --------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Công ty TNHH Minh Phát", "minh phat"),
        ("CONG TY TNHH MINH PHAT", "minh phat"),
        ("Minh Phat Co., Ltd", "minh phat"),
        ("Công ty Cổ phần Đại Việt", "dai viet"),
        ("Dai Viet JSC", "dai viet"),
        ("CÔNG TY TNHH MỘT THÀNH VIÊN ĐẠI PHÁT", "dai phat"),
        ("Tập đoàn Hòa Phát", "hoa phat"),
        ("CTCP   Sữa  Việt-Nam", "sua viet nam"),
        ("Coffee House", "coffee house"),
        ("Cooperative Bank Corp.", "cooperative bank"),
        ("Alpha S.A.", "alpha"),
        ("Beta B.V.", "beta"),
        ("Acme, Inc.", "acme"),
        ("Công ty TNHH", "cong ty tnhh"),  # only legal forms: kept as is
        ("", ""),
        ("  ...  ", ""),
    ],
)
def test_normalise_name(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


def test_co_phan_removed_as_phrase_before_co() -> None:
    # "co phan" is one legal form; "phan" must not survive as a name token.
    assert normalise_name("Công ty Cổ Phần Phan Thị") == "phan thi"
    # "co" inside another word is never stripped.
    assert normalise_name("Cocoa Co") == "cocoa"


@pytest.mark.parametrize(
    ("left", "right"),
    list(
        itertools.combinations(
            ["Công ty TNHH Minh Phát", "CONG TY TNHH MINH PHAT", "Minh Phat Co., Ltd"],
            2,
        )
    )
    + [("Công ty Cổ phần Đại Việt", "Dai Viet JSC")],
)
def test_name_rule_matches_vietnamese_variants(left: str, right: str) -> None:
    evidence = match_accounts(vn(left), vn(right))
    assert evidence is not None
    assert evidence.rule == "name"
    assert evidence.score == pytest.approx(1.0)
    assert match_accounts(vn(right), vn(left)) is not None


def test_similar_but_different_names_do_not_match() -> None:
    assert name_similarity("Minh Phát", "Minh Phương") < NAME_SIMILARITY_THRESHOLD
    assert match_accounts(vn("Minh Phát"), vn("Minh Phương")) is None


def test_name_similarity_uses_token_sort() -> None:
    assert name_similarity("Phat Minh", "Công ty Minh Phát") == pytest.approx(1.0)
    assert name_similarity("", "Minh Phat") == 0.0


def test_name_rule_requires_same_country() -> None:
    name = "Công ty TNHH Minh Phát"
    assert match_accounts(vn(name), Customer(name, country="US")) is None
    assert match_accounts(vn(name), Customer(name)) is None
    assert match_accounts(Customer(name), Customer(name)) is None
    assert match_accounts(Customer(name, country=""), Customer(name, country="")) is None
    # Country comparison ignores case and surrounding spaces.
    assert match_accounts(vn(name), Customer(name, country=" vn ")) is not None


def test_name_threshold_is_configurable_and_validated() -> None:
    a, b = vn("Minh Phát"), vn("Minh Phương")
    assert match_accounts(a, b, name_threshold=0.5) is not None
    with pytest.raises(ValueError):
        match_accounts(a, b, name_threshold=1.5)


def test_empty_names_never_match_by_name() -> None:
    assert match_accounts(vn("!!!"), vn("???")) is None


# ------------------------------------------------------------------- domains


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://www.MinhPhat.vn:443/path?q", "minhphat.vn"),
        ("http://minhphat.vn", "minhphat.vn"),
        ("minhphat.vn.", "minhphat.vn"),
        ("https://www.minhphat.vn./contact", "minhphat.vn"),
        ("sales@minhphat.vn", "minhphat.vn"),
        ("mailto:Sales@MinhPhat.vn", "minhphat.vn"),
        ("//minhphat.vn/x", "minhphat.vn"),
        ("  WWW.Shop.MinhPhat.vn  ", "shop.minhphat.vn"),
        ("minhphát.vn", "xn--minhpht-mwa.vn"),
        ("gmail.com", None),
        ("https://www.Gmail.com/", None),
        ("someone@yahoo.com.vn", None),
        ("mail.yahoo.com", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("localhost", None),
        ("minh phat", None),
        ("a..b", None),
    ],
)
def test_normalise_domain(raw: str | None, expected: str | None) -> None:
    assert normalise_domain(raw) == expected


def test_free_mail_list_is_broad() -> None:
    for domain in (
        "gmail.com",
        "yahoo.com",
        "outlook.com",
        "hotmail.com",
        "icloud.com",
    ):
        assert domain in FREE_MAIL_DOMAINS
        assert normalise_domain(domain) is None


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("gmail.com", "gmail.com"),
        ("https://www.gmail.com", "gmail.com"),
        ("a@gmail.com", "b@gmail.com"),
        ("outlook.com", "http://outlook.com/"),
    ],
)
def test_free_mail_domains_never_match(left: str, right: str) -> None:
    a = Customer("Alpha Trading", domain=left)
    b = Customer("Beta Logistics", domain=right)
    assert match_accounts(a, b) is None


def test_domain_rule_matches_after_normalising() -> None:
    a = Customer("Minh Phat", domain="https://www.minhphat.vn/contact")
    b = Customer("Completely Different Name", domain="minhphat.vn")
    evidence = match_accounts(a, b)
    assert evidence == MatchEvidence("domain", "minhphat.vn", "minhphat.vn", 1.0)


def test_different_domains_do_not_match() -> None:
    a = Customer("Alpha", domain="minhphat.vn")
    b = Customer("Beta", domain="minhphat.com.vn")
    assert match_accounts(a, b) is None


# ------------------------------------------------------------------- tax ids


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0101-234-567", "0101234567"),
        (" 0101234567-001 ", "0101234567001"),
        ("de 123 456 789", "DE123456789"),
        ("０１０１２３４５６７", "0101234567"),  # full-width digits
        ("N/A", None),
        ("---", None),
        ("000-000-0000", None),
        ("", None),
        (None, None),
    ],
)
def test_normalise_tax_id(raw: str | None, expected: str | None) -> None:
    assert normalise_tax_id(raw) == expected


def test_tax_id_key_reduces_vietnamese_branch_to_parent() -> None:
    assert tax_id_key("0101234567-001") == "0101234567"
    assert tax_id_key("0101234567-001", "vn") == "0101234567"
    assert tax_id_key("0101234567") == "0101234567"
    # A 13-digit id from another country compares whole.
    assert tax_id_key("1234567890123", "TH") == "1234567890123"
    assert tax_id_key("DE123456789") == "DE123456789"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("0101234567", "0101-234-567"),
        ("0101234567-001", "0101234567"),
        ("0101234567-001", "0101234567-002"),
        ("de 123 456 789", "DE123456789"),
        ("DE-123.456.789", "de123456789"),
    ],
)
def test_tax_id_rule_matches(left: str, right: str) -> None:
    a = Customer("Alpha", tax_id=left, country="VN")
    b = Customer("Beta", tax_id=right)
    evidence = match_accounts(a, b)
    assert evidence is not None
    assert evidence.rule == "tax_id"
    assert evidence.left == normalise_tax_id(left)
    assert evidence.right == normalise_tax_id(right)
    assert evidence.score == 1.0


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("0101234567", "0101234568"),
        ("0101234567-001", "0101234568-001"),
        ("DE123456789", "FR123456789"),
        ("N/A", "n/a"),
    ],
)
def test_different_tax_ids_do_not_match(left: str, right: str) -> None:
    assert match_accounts(Customer("Alpha", tax_id=left), Customer("Beta", tax_id=right)) is None


def test_foreign_13_digit_ids_do_not_reduce_but_identical_ids_match() -> None:
    a = Customer("Alpha", tax_id="1234567890123", country="TH")
    assert match_accounts(a, Customer("Beta", tax_id="1234567890", country="TH")) is None
    assert match_accounts(a, Customer("Beta", tax_id="1234567890-123", country="VN")) is not None


# ------------------------------------------------------------------ evidence


def test_rules_are_tried_in_order_domain_tax_name() -> None:
    a = vn("Minh Phát", domain="minhphat.vn", tax_id="0101234567")
    b = vn("Minh Phat", domain="www.minhphat.vn", tax_id="0101234567")
    assert match_accounts(a, b) == MatchEvidence("domain", "minhphat.vn", "minhphat.vn", 1.0)
    b2 = vn("Minh Phat", domain="other.vn", tax_id="0101-234-567")
    assert match_accounts(a, b2) == MatchEvidence("tax_id", "0101234567", "0101234567", 1.0)
    b3 = vn("Minh Phat Co., Ltd", domain="other.vn", tax_id="9999999999")
    assert match_accounts(a, b3) == MatchEvidence("name", "minh phat", "minh phat", 1.0)


def test_name_evidence_records_normalised_values_and_score() -> None:
    a = vn("Công ty TNHH Thương Mại Minh Phát")
    b = vn("Thuong Mai Minh Phat Co., Ltd")
    evidence = match_accounts(a, b)
    assert evidence is not None
    assert evidence.to_dict() == {
        "rule": "name",
        "left": "thuong mai minh phat",
        "right": "thuong mai minh phat",
        "score": 1.0,
    }
    c = vn("Thuong Mai Minh Phatt")
    near = match_accounts(a, c)
    assert near is not None
    assert near.right == "thuong mai minh phatt"
    assert NAME_SIMILARITY_THRESHOLD <= near.score < 1.0
    assert near.score == pytest.approx(name_similarity(a.name, c.name))


def test_customer_dict_round_trip() -> None:
    payload = {
        "name": "Công ty TNHH Minh Phát",
        "domain": "minhphat.vn",
        "tax_id": "0101234567",
        "country": "VN",
        "extra": "ignored",
    }
    customer = Customer.from_dict(payload)
    assert customer == Customer("Công ty TNHH Minh Phát", "minhphat.vn", "0101234567", "VN")
    assert Customer.from_dict(customer.to_dict()) == customer
    assert Customer.from_dict({"name": "X"}).to_dict() == {
        "name": "X",
        "domain": None,
        "tax_id": None,
        "country": None,
    }
    with pytest.raises(TypeError):
        Customer.from_dict({"domain": "x.vn"})
    with pytest.raises(TypeError):
        Customer.from_dict({"name": "X", "tax_id": 101234567})


# ---------------------------------------------------------------- properties

_name_parts = st.sampled_from(
    [
        "Công ty", "TNHH", "Cổ phần", "Đại", "Việt", "Minh", "Phát", "Phương", "Co.,",
        "Ltd", "JSC", "S.A.", "coffee", "một thành viên", "Hòa", "&", "-", "Inc.",
    ]
)  # fmt: skip
names = st.one_of(
    st.lists(_name_parts, max_size=6).map(" ".join),
    st.text(max_size=30),
)
domains = st.one_of(
    st.none(),
    st.sampled_from(["minhphat.vn", "https://www.minhphat.vn/x", "gmail.com", "dai-viet.com.vn", ""]),
    st.text(max_size=20),
)
tax_ids = st.one_of(
    st.none(),
    st.sampled_from(["0101234567", "0101234567-001", "0101234567-002", "DE123456789", "N/A", ""]),
    st.text(alphabet="0123456789-. ABde", max_size=16),
)
countries = st.one_of(st.none(), st.sampled_from(["VN", "vn", "US", "TH", ""]))
customers = st.builds(Customer, name=names, domain=domains, tax_id=tax_ids, country=countries)


@settings(max_examples=300)
@given(customers, customers)
def test_match_is_symmetric(a: Customer, b: Customer) -> None:
    ab, ba = match_accounts(a, b), match_accounts(b, a)
    assert (ab is None) == (ba is None)
    if ab is not None and ba is not None:
        assert ab.rule == ba.rule
        assert ab.score == pytest.approx(ba.score)
        assert (ab.left, ab.right) == (ba.right, ba.left)


@settings(max_examples=300)
@given(customers)
def test_match_is_reflexive(a: Customer) -> None:
    expected = (
        normalise_domain(a.domain) is not None
        or normalise_tax_id(a.tax_id) is not None
        or (bool(normalise_name(a.name)) and bool((a.country or "").strip()))
    )
    assert (match_accounts(a, a) is not None) == expected


@settings(max_examples=500)
@given(names)
def test_normalise_name_is_idempotent(raw: str) -> None:
    once = normalise_name(raw)
    assert normalise_name(once) == once


@given(st.text(max_size=40))
def test_normalise_name_arbitrary_text_is_idempotent(raw: str) -> None:
    once = normalise_name(raw)
    assert normalise_name(once) == once


@given(st.text(max_size=30))
def test_normalise_domain_is_idempotent(raw: str) -> None:
    once = normalise_domain(raw)
    assert once is None or normalise_domain(once) == once


@given(names, names)
def test_similarity_in_unit_interval(a: str, b: str) -> None:
    score = name_similarity(a, b)
    assert 0.0 <= score <= 1.0
    assert score == name_similarity(b, a)


@given(customers, customers)
def test_match_is_deterministic(a: Customer, b: Customer) -> None:
    assert match_accounts(a, b) == match_accounts(a, b)
