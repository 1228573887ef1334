"""Customer-account matching (spec: channel.md, "Customer-account matching").

Two customer records denote the same account when they share a normalised
domain, a tax id, or (within one country) a sufficiently similar name.
Pure functions: standard library and rapidfuzz only, no I/O. The normalisations
are memoised (``functools.lru_cache`` on their immutable inputs): a customer is
normalised once however many events and comparisons carry it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from rapidfuzz import fuzz

__all__ = [
    "FREE_MAIL_DOMAINS",
    "LEGAL_FORM_WORDS",
    "NAME_SIMILARITY_THRESHOLD",
    "Customer",
    "MatchEvidence",
    "MatchRule",
    "match_accounts",
    "name_similarity",
    "normalise_country",
    "normalise_domain",
    "normalise_name",
    "normalise_tax_id",
    "tax_id_key",
]

NAME_SIMILARITY_THRESHOLD = 0.92

MatchRule = Literal["domain", "tax_id", "name"]

FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        # Google
        "gmail.com", "googlemail.com",
        # Yahoo
        "yahoo.com", "yahoo.com.vn", "yahoo.co.uk", "yahoo.co.jp", "yahoo.fr",
        "yahoo.de", "yahoo.co.in", "yahoo.com.sg", "ymail.com", "rocketmail.com",
        # Microsoft
        "outlook.com", "outlook.com.vn", "hotmail.com", "hotmail.co.uk",
        "hotmail.fr", "hotmail.de", "live.com", "live.co.uk", "msn.com",
        # Apple
        "icloud.com", "me.com", "mac.com",
        # Others
        "aol.com", "proton.me", "protonmail.com", "pm.me", "gmx.com", "gmx.de",
        "gmx.net", "web.de", "mail.com", "mail.ru", "yandex.ru", "yandex.com",
        "qq.com", "163.com", "126.com", "sina.com", "zoho.com", "tutanota.com",
        "fastmail.com", "naver.com", "hanmail.net", "rediffmail.com", "inbox.com",
    }
)  # fmt: skip

_LEGAL_FORM_PHRASES: tuple[tuple[str, ...], ...] = (
    ("mot", "thanh", "vien"),
    ("cong", "ty"),
    ("co", "phan"),
    ("tap", "doan"),
)
_LEGAL_FORM_TOKENS: frozenset[str] = frozenset(
    {
        "tnhh", "mtv", "cp", "ctcp", "inc", "llc", "ltd", "limited", "co",
        "corp", "corporation", "company", "jsc", "plc", "gmbh", "sa", "ag", "bv",
    }
)  # fmt: skip
# Every token that can start something _remove_legal_forms drops.
_LEGAL_FORM_STARTS: frozenset[str] = _LEGAL_FORM_TOKENS | frozenset(phrase[0] for phrase in _LEGAL_FORM_PHRASES)
LEGAL_FORM_WORDS: frozenset[str] = _LEGAL_FORM_TOKENS | frozenset(" ".join(phrase) for phrase in _LEGAL_FORM_PHRASES)

_VIETNAM_COUNTRY_CODES = frozenset({"VN", "VNM"})

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
_URL_TAIL = re.compile(r"[/?#\\]")
_DOMAIN_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?$")
# Dotted single-letter abbreviations such as "S.A." or "J.S.C" -> "SA", "JSC".
_DOTTED_ABBREVIATION = re.compile(r"(?<![^\W_])(?:[^\W\d_]\.)+[^\W\d_]\.?(?![^\W_])")
# One character that is not ``str.isalnum`` (``\w`` is alphanumeric or ``_``), each replaced by a space.
_NOT_ALNUM = re.compile(r"[\W_]")


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer record as carried by registrations, sales and opportunities."""

    name: str
    domain: str | None = None
    tax_id: str | None = None
    country: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Customer:
        """Build from an event payload; unknown keys are ignored."""
        name = d.get("name")
        if not isinstance(name, str):
            raise TypeError("customer 'name' must be a string")
        optional: dict[str, str | None] = {}
        for key in ("domain", "tax_id", "country"):
            value = d.get(key)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"customer {key!r} must be a string or null")
            optional[key] = value
        return cls(name=name, **optional)

    def to_dict(self) -> dict[str, str | None]:
        """Plain dict with all four keys (absent values as None)."""
        return {
            "name": self.name,
            "domain": self.domain,
            "tax_id": self.tax_id,
            "country": self.country,
        }


@dataclass(frozen=True, slots=True)
class MatchEvidence:
    """Why two customers were judged the same account."""

    rule: MatchRule
    left: str
    right: str
    score: float

    def to_dict(self) -> dict[str, str | float]:
        """Plain dict suitable for event payloads."""
        return {
            "rule": self.rule,
            "left": self.left,
            "right": self.right,
            "score": self.score,
        }


def _is_free_mail(domain: str) -> bool:
    """The domain or any parent domain of it is a free-mail domain."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in FREE_MAIL_DOMAINS for i in range(len(labels)))


_CACHE_SIZE = 1 << 16


@lru_cache(maxsize=_CACHE_SIZE)
def normalise_domain(raw: str | None) -> str | None:
    """Canonical host of a domain, URL or e-mail address.

    Lower-cases; strips scheme, user info / e-mail local part, path, query,
    fragment, port, surrounding dots and one leading ``www.``; IDNs become
    punycode. Returns None when empty, malformed (no dot, bad label) or a
    free-mail domain (or a subdomain of one).
    """
    if raw is None:
        return None
    host = raw.strip().lower()
    host = _SCHEME.sub("", host)
    host = host.removeprefix("//")
    host = _URL_TAIL.split(host, maxsplit=1)[0]
    host = host.rpartition("@")[2]
    host = host.split(":", 1)[0]
    host = host.strip(".")
    host = host.removeprefix("www.")
    if not host:
        return None
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = host.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        return None
    if _is_free_mail(host):
        return None
    return host


@lru_cache(maxsize=_CACHE_SIZE)
def normalise_tax_id(raw: str | None) -> str | None:
    """Tax id with letters and digits only, upper-cased.

    Returns None when nothing is left, or for obvious placeholders (no digit
    at all, e.g. ``N/A``, or only zeros).
    """
    if raw is None:
        return None
    text = unicodedata.normalize("NFKC", raw).upper()
    value = "".join(ch for ch in text if ch.isalnum())
    digits = [ch for ch in value if ch.isdigit()]
    if not digits or all(ch == "0" for ch in digits):
        return None
    return value


def normalise_country(raw: str | None) -> str | None:
    """Country code stripped and upper-cased; None when empty."""
    if raw is None:
        return None
    value = raw.strip().upper()
    return value or None


def tax_id_key(raw: str | None, country: str | None = None) -> str | None:
    """Comparable tax-id key.

    A Vietnamese 13-digit branch code (``XXXXXXXXXX-YYY``) reduces to its
    10-digit parent, so a branch matches its parent and two branches of the
    same parent match each other. The reduction applies only when
    ``country`` is Vietnam or unknown; other ids compare whole.
    """
    value = normalise_tax_id(raw)
    if value is None:
        return None
    code = normalise_country(country)
    if (
        len(value) == 13
        and value.isascii()
        and value.isdigit()
        and (code is None or code in _VIETNAM_COUNTRY_CODES)
        and value[:10] != "0" * 10
    ):
        return value[:10]
    return value


def _fold(text: str) -> str:
    """Strip diacritics (``đ`` -> ``d``) and lower-case, to a fixed point."""
    if text.isascii():
        return text.lower()  # what the loop gives: NFKD changes no ASCII text, which has no combining marks
    for _ in range(4):
        mapped = text.replace("đ", "d").replace("Đ", "d")
        decomposed = unicodedata.normalize("NFKD", mapped)
        stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
        folded = stripped.lower()
        if folded == text:
            break
        text = folded
    return text


def _remove_legal_forms(tokens: list[str]) -> list[str]:
    """Drop legal-form phrases and words (whole tokens only), to a fixed point."""
    if _LEGAL_FORM_STARTS.isdisjoint(tokens):
        return tokens  # nothing to drop: no legal-form word, no first word of a phrase
    while True:
        kept: list[str] = []
        i = 0
        while i < len(tokens):
            for phrase in _LEGAL_FORM_PHRASES:
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    i += len(phrase)
                    break
            else:
                if tokens[i] not in _LEGAL_FORM_TOKENS:
                    kept.append(tokens[i])
                i += 1
        if kept == tokens:
            return kept
        tokens = kept


@lru_cache(maxsize=_CACHE_SIZE)
def normalise_name(raw: str) -> str:
    """Company name for comparison.

    NFKD, diacritics stripped (``đ`` -> ``d``), lower-cased, dotted
    abbreviations joined (``S.A.`` -> ``sa``), other punctuation to spaces,
    legal-form words dropped (kept if nothing else remains), spaces collapsed.
    """
    text = _fold(raw)
    if "." in text:  # every dotted abbreviation has a dot
        text = _DOTTED_ABBREVIATION.sub(lambda m: m.group().replace(".", ""), text)
    text = _NOT_ALNUM.sub(" ", text)
    tokens = text.split()
    return " ".join(_remove_legal_forms(tokens) or tokens)


def _similarity(left: str, right: str) -> float:
    if not left or not right:
        return 0.0
    return float(fuzz.token_sort_ratio(left, right)) / 100.0


def name_similarity(a: str, b: str) -> float:
    """Token-sort ratio (0..1) of the normalised names; 0.0 if either is empty."""
    return _similarity(normalise_name(a), normalise_name(b))


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """A customer's normalised matching keys, computed once."""

    domain: str | None
    tax_id: str | None
    tax_key: str | None
    country: str | None
    name: str


@lru_cache(maxsize=_CACHE_SIZE)
def account_keys(customer: Customer) -> AccountKeys:
    """The customer's normalised keys (memoised on the customer, a frozen value)."""
    return AccountKeys(
        domain=normalise_domain(customer.domain),
        tax_id=normalise_tax_id(customer.tax_id),
        tax_key=tax_id_key(customer.tax_id, customer.country),
        country=normalise_country(customer.country),
        name=normalise_name(customer.name),
    )


def match_keys(
    a: AccountKeys, b: AccountKeys, name_threshold: float = NAME_SIMILARITY_THRESHOLD
) -> MatchEvidence | None:
    """``match_accounts`` on pre-normalised keys."""
    if not 0.0 <= name_threshold <= 1.0:
        raise ValueError("name_threshold must be within 0..1")
    if a.domain is not None and a.domain == b.domain:
        return MatchEvidence("domain", a.domain, b.domain, 1.0)
    if a.tax_id is not None and b.tax_id is not None and (a.tax_id == b.tax_id or a.tax_key == b.tax_key):
        return MatchEvidence("tax_id", a.tax_id, b.tax_id, 1.0)
    if a.country is not None and a.country == b.country and a.name and b.name:
        score = _similarity(a.name, b.name)
        if score >= name_threshold:
            return MatchEvidence("name", a.name, b.name, score)
    return None


def match_accounts(a: Customer, b: Customer, name_threshold: float = NAME_SIMILARITY_THRESHOLD) -> MatchEvidence | None:
    """Evidence that ``a`` and ``b`` are the same account, or None.

    Rules in order: domain, tax id, name (same country required). Evidence
    holds the normalised values of ``a`` (left) and ``b`` (right).
    """
    return match_keys(account_keys(a), account_keys(b), name_threshold)
