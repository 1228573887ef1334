"""A deterministic sample programme: a believable channel, step by step.

``generate(seed, scale, start, quarters)`` returns a time-ordered list of
``Step``s: ``command`` steps name a ``PartnerProgram`` method and its keyword
arguments; ``inbound`` steps are what an internal service would publish on
Kafka (``prm.sale.recorded.v1``, ``prm.sale.refunded.v1``,
``prm.opportunity.opened.v1``): ``args`` is the CloudEvents ``data``
(JSON-ready) plus the envelope's ``id`` and ``source``.

The same seed always gives the same steps; ``scale`` adds cohorts of about 30
partners each, so volume grows linearly. The generator keeps to the domain's
rules (capacity, active partners only, contracts in force, conflicts blocking
approval, refunds within the sale), so ``run_commands`` records every step.

What the programme contains, per cohort of 30 partners (18 in Vietnam across
HN/HCM/DN, the rest in SG, TH, US, DE, JP; every type and size):

* two rejected applicants, one or two left in onboarding, one onboarding late
  (overdue, then active), one suspended and reinstated, one terminated, one
  contract left to expire, one territory amendment, one segment change;
* one plan ``STD`` (defaults from the start, a ``services`` category rate from
  mid-way), contracts of one or two years (some auto-renew, some renewed);
* training and certifications (some expire), quarterly tier overrides;
* deal registrations: approved then won, lost, withdrawn or expired (with
  ``expire_registrations`` at every quarter end), rejected with the standard
  reasons, one protection extension;
* sales in VND for Vietnamese partners (large ones cross the 1e9 and 5e9
  quarterly accelerators) and in USD cents elsewhere (crossing 10,000,000 and
  50,000,000), multi-line with software/hardware/services, direct sales,
  late-arriving sales, a sale after a termination, partial and full refunds,
  direct opportunities;
* deliberate channel conflicts: the same customer registered by two partners
  under name variants (resolved with ``resolve_conflict``), the same domain
  (withdrawn), the same tax id with a branch code (rejected), a direct
  opportunity on a partner-protected account (``dismiss_conflict``), and a
  sale by partner X on partner Y's protected account (resolved).
"""

from __future__ import annotations

import copy
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid5

from rapidfuzz import fuzz, process

from domain.application import CommandResult, PartnerProgram
from domain.conflicts import DIRECT_VS_PARTNER, PARTNER_VS_PARTNER, SALE_OUTSIDE_REGISTRATION, conflict_id
from domain.matching import normalise_domain, normalise_name, normalise_tax_id, tax_id_key

__all__ = [
    "COMMAND",
    "COMMANDS",
    "INBOUND",
    "INBOUND_TYPES",
    "OPPORTUNITY_OPENED",
    "SALE_RECORDED",
    "SALE_REFUNDED",
    "RunSummary",
    "SampleStepError",
    "Step",
    "generate",
    "run_commands",
    "step_counts",
    "to_cloudevent",
]

COMMAND = "command"
INBOUND = "inbound"
SALE_RECORDED = "prm.sale.recorded.v1"
SALE_REFUNDED = "prm.sale.refunded.v1"
OPPORTUNITY_OPENED = "prm.opportunity.opened.v1"
INBOUND_TYPES = (SALE_RECORDED, SALE_REFUNDED, OPPORTUNITY_OPENED)

COMMANDS = frozenset(
    {
        "change_settings",
        "apply_partner",
        "approve_partner",
        "reject_partner",
        "suspend_partner",
        "reinstate_partner",
        "terminate_partner",
        "change_segment",
        "override_tier",
        "evaluate_tier",
        "record_training",
        "grant_certification",
        "sign_contract",
        "amend_contract",
        "renew_contract",
        "terminate_contract",
        "expire_contract",
        "submit_registration",
        "approve_registration",
        "reject_registration",
        "extend_protection",
        "mark_registration_lost",
        "withdraw_registration",
        "expire_registrations",
        "resolve_conflict",
        "dismiss_conflict",
        "create_plan",
        "publish_plan_version",
        "request_recalculation",
        "record_payout",
    }
)
"""The ``PartnerProgram`` methods a command step may name."""

PLAN_ID = "STD"
ONBOARDING_COURSE = "partner-onboarding"
_SAMPLE_NAMESPACE = UUID("0b6c9f1e-5d2a-5e47-8a3b-6c1d2e3f4a5b")


# --------------------------------------------------------------------------
# Public shapes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of the sample programme.

    ``kind`` is ``command`` (``name`` is a ``PartnerProgram`` method, ``args``
    its keyword arguments, times as UTC datetimes and dates as ``date``) or
    ``inbound`` (``name`` is the CloudEvents type, ``args`` the CloudEvents
    ``data`` as JSON-ready values plus the envelope's ``id`` and ``source``).
    ``at`` is when the step happens (for inbound steps, the CloudEvents time).
    """

    kind: str
    name: str
    args: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class RunSummary:
    """What ``run_commands`` did: steps applied, per step name, events recorded."""

    steps: int
    counts: dict[str, int]
    events: int
    duplicates: int
    last_position: int


class SampleStepError(RuntimeError):
    """A step was refused; carries its index and the step."""

    def __init__(self, index: int, step: Step, cause: BaseException) -> None:
        super().__init__(f"step {index} ({step.kind} {step.name} at {_iso(step.at)}) failed: {cause}")
        self.index = index
        self.step = step
        self.cause = cause


def step_counts(steps: Sequence[Step]) -> dict[str, int]:
    """Steps per name, sorted by name."""
    return dict(sorted(Counter(step.name for step in steps).items()))


def to_cloudevent(step: Step) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode envelope of an inbound step (JSON-ready)."""
    if step.kind != INBOUND:
        raise ValueError(f"only inbound steps are CloudEvents, not {step.kind} {step.name}")
    data = {key: value for key, value in step.args.items() if key not in ("id", "source")}
    subject = data["opportunity_id"] if step.name == OPPORTUNITY_OPENED else data["sale_id"]
    return {
        "specversion": "1.0",
        "id": step.args["id"],
        "source": step.args["source"],
        "type": step.name,
        "time": _iso(step.at),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": copy.deepcopy(data),
    }


def run_commands(
    app: PartnerProgram, steps: Sequence[Step], progress: Callable[[int, int], None] | None = None
) -> RunSummary:
    """Apply every step to ``app``; raise ``SampleStepError`` on the first refusal.

    Inbound steps go through ``record_sale`` / ``refund_sale`` /
    ``open_opportunity`` with their ``source`` and the CloudEvents id as
    ``message_id``. ``progress(done, total)`` is called after each step.
    """
    counts: Counter[str] = Counter()
    events = duplicates = 0
    total = len(steps)
    for index, step in enumerate(steps):
        try:
            results = _apply(app, step)
        except Exception as exc:
            raise SampleStepError(index, step, exc) from exc
        counts[step.name] += 1
        for result in results:
            events += len(result.events)
            duplicates += int(result.duplicate)
        if progress is not None:
            progress(index + 1, total)
    return RunSummary(
        steps=total,
        counts=dict(sorted(counts.items())),
        events=events,
        duplicates=duplicates,
        last_position=app.max_position(),
    )


def _apply(app: PartnerProgram, step: Step) -> list[CommandResult]:
    args = copy.deepcopy(step.args)
    if step.kind == COMMAND:
        if step.name not in COMMANDS:
            raise ValueError(f"unknown command {step.name!r}")
        result = getattr(app, step.name)(**args)
        return list(result) if isinstance(result, list) else [result]
    if step.kind != INBOUND:
        raise ValueError(f"unknown step kind {step.kind!r}")
    message_id = args.pop("id")
    source = args.pop("source")
    if step.name == SALE_RECORDED:
        return [
            app.record_sale(
                sale_id=args["sale_id"],
                partner_id=args.get("partner_id"),
                registration_id=args.get("registration_id"),
                customer=args["customer"],
                lines=args["lines"],
                occurred_at=_parse(args["occurred_at"]),
                source=source,
                message_id=message_id,
            )
        ]
    if step.name == SALE_REFUNDED:
        return [
            app.refund_sale(
                sale_id=args["sale_id"],
                refund_id=args["refund_id"],
                amount_minor=args["amount_minor"],
                currency=args["currency"],
                occurred_at=_parse(args["occurred_at"]),
                reason=args.get("reason"),
                source=source,
                message_id=message_id,
            )
        ]
    if step.name == OPPORTUNITY_OPENED:
        return [
            app.open_opportunity(
                opportunity_id=args["opportunity_id"],
                owner=args["owner"],
                customer=args["customer"],
                estimated_value_minor=args["estimated_value_minor"],
                currency=args["currency"],
                opened_at=_parse(args["opened_at"]),
                source=source,
                message_id=message_id,
            )
        ]
    raise ValueError(f"unknown inbound type {step.name!r}")


def generate(seed: int = 42, scale: int = 1, start: date = date(2025, 1, 1), quarters: int = 6) -> list[Step]:
    """The sample programme for ``seed``: about ``30 * scale`` partners over ``quarters`` quarters."""
    if scale < 1:
        raise ValueError("scale must be >= 1")
    if quarters < 1:
        raise ValueError("quarters must be >= 1")
    builder = _Builder(seed, start, quarters)
    builder.programme()
    for cohort in range(scale):
        _Cohort(builder, cohort).generate()
    builder.quarter_ends()
    return builder.render()


# --------------------------------------------------------------------------
# Time and text helpers
# --------------------------------------------------------------------------


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return parsed.astimezone(UTC)


def _add_months(day: date, months: int) -> date:
    index = day.month - 1 + months
    return date(day.year + index // 12, index % 12 + 1, 1)


def _ascii(text: str) -> str:
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", _ascii(text).lower())


# Local business hours, in UTC, by region.
_HOURS: dict[str, tuple[int, int]] = {
    "VN": (1, 10),
    "TH": (2, 10),
    "KH": (2, 10),
    "SG": (1, 9),
    "JP": (0, 8),
    "DE": (7, 16),
    "US": (14, 22),
}


# --------------------------------------------------------------------------
# Names, places, catalogue
# --------------------------------------------------------------------------

_VN_LEGAL = ("Công ty TNHH", "Công ty Cổ phần", "Công ty TNHH MTV", "Công ty TNHH Một thành viên", "Tập đoàn")
_VN_LEGAL_WEIGHTS = (40, 40, 10, 6, 4)
_VN_SYLLABLES = (
    "An", "Bảo", "Bình", "Châu", "Đại", "Đông", "Gia", "Hà", "Hải", "Hòa", "Hoàng", "Hồng", "Hưng", "Khang",
    "Kim", "Lộc", "Long", "Mai", "Minh", "Nam", "Ngọc", "Nhật", "Phát", "Phú", "Phúc", "Quang", "Sao", "Sơn",
    "Tài", "Tân", "Thành", "Thịnh", "Thiên", "Tiến", "Toàn", "Trung", "Trường", "Tuấn", "Vạn", "Việt", "Vinh",
    "Xuân", "Hiệp", "Đức", "Thái", "Cường",
)  # fmt: skip
_VN_INDUSTRIES = (
    ("Thương mại", "trading"), ("Xây dựng", "construction"), ("Dược phẩm", "pharma"), ("Thực phẩm", "foods"),
    ("Vận tải", "transport"), ("Logistics", "logistics"), ("Dệt may", "textile"), ("Nhựa", "plastic"),
    ("Thép", "steel"), ("Bất động sản", "land"), ("Du lịch", "travel"), ("Giáo dục", "edu"),
    ("Điện máy", "electric"), ("Nông sản", "agri"), ("Thủy sản", "seafood"), ("Cơ khí", "mechanical"),
    ("Bao bì", "packaging"), ("Xuất nhập khẩu", "trade"), ("Nội thất", "furniture"), ("Y tế", "medical"),
    ("Bán lẻ", "retail"), ("Năng lượng", "energy"), ("In ấn", "print"), ("Gỗ", "wood"), ("Hóa chất", "chem"),
)  # fmt: skip
_VN_PARTNER_SECTORS = (
    ("Công nghệ", "tech"), ("Giải pháp Số", "digital"), ("Tin học", "it"), ("Phần mềm", "soft"),
    ("Tích hợp Hệ thống", "si"), ("Dịch vụ CNTT", "itservices"), ("Viễn thông", "telecom"),
    ("Chuyển đổi Số", "dx"), ("Hệ thống Thông tin", "infosys"),
)  # fmt: skip
_VN_CITIES = {"HN": ("Hà Nội", "Thăng Long", "Thủ Đô"), "HCM": ("Sài Gòn", "Phương Nam", "Gia Định"),
              "DN": ("Đà Nẵng", "Miền Trung", "Sông Hàn")}  # fmt: skip
_VN_TAX_PREFIX = {"HN": "01", "HCM": "03", "DN": "04"}
_VN_FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô")
_VN_MIDDLE = ("Văn", "Thị", "Minh", "Thanh", "Hữu", "Đức", "Ngọc", "Quốc", "Thu", "Gia")
_VN_GIVEN = (
    "An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hương", "Khánh", "Linh", "Long", "Mai", "Nam",
    "Phong", "Quân", "Thảo", "Trang", "Tuấn", "Việt", "Yến", "Hiếu", "Lan", "Sơn", "Tâm", "Vy",
)  # fmt: skip

_EN_INDUSTRIES = (
    "Logistics", "Foods", "Retail", "Healthcare", "Engineering", "Hospitality", "Education", "Pharma",
    "Textiles", "Electronics", "Auto Parts", "Construction", "Media", "Insurance", "Marine", "Packaging",
    "Furniture", "Energy", "Agritech", "Chemicals",
)  # fmt: skip
_EN_SECONDS = ("", "Bay", "Point", "Ridge", "Star", "Gate", "Harbour", "Valley", "Crest", "Link")


@dataclass(frozen=True)
class _Country:
    places: tuple[str, ...]
    legal: tuple[str, ...]
    tld: str
    partner_words: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    territory: tuple[str, ...]


_COUNTRIES: dict[str, _Country] = {
    "SG": _Country(
        ("Kallang", "Tanjong", "Bukit", "Changi", "Jurong", "Sentosa", "Serangoon", "Tampines", "Novena",
         "Clementi", "Woodlands", "Marina", "Orchard", "Raffles"),
        ("Pte. Ltd.",), "com.sg", ("Lion City", "Merlion", "Straits", "Temasek", "Harbourfront", "Keppel"),
        ("Wei Ming", "Hui Min", "Jun Jie", "Siew Ling", "Priya", "Arjun", "Nurul", "Daniel", "Rachel", "Kelvin"),
        ("Tan", "Lim", "Lee", "Ng", "Wong", "Goh", "Chua", "Rahman", "Nair", "Ong"), ("SG", "MY"),
    ),
    "TH": _Country(
        ("Siam", "Chao Phraya", "Lanna", "Rattana", "Sukhumvit", "Andaman", "Isan", "Ayutthaya", "Phuket",
         "Chiang Mai", "Korat", "Rama"),
        ("Co., Ltd.", "Public Co., Ltd."), "co.th", ("Siam", "Bangkok", "Lanna", "Krungthep", "Srisuk", "Chaiya"),
        ("Somchai", "Suda", "Anan", "Kanya", "Niran", "Ploy", "Thanawat", "Malee", "Kittisak", "Pim"),
        ("Srisuk", "Wongsa", "Chaiyaporn", "Rattanakul", "Boonmee", "Saetang", "Phongsri", "Kaewmanee"), ("TH",),
    ),
    "US": _Country(
        ("Pacific", "Blue Ridge", "Lakeshore", "Redwood", "Summit", "Granite", "Silver Creek", "Bayview",
         "Prairie", "Cedar", "Hudson", "Mesa"),
        ("Inc.", "LLC", "Corp."), "com", ("Pacific Crest", "Blue Ridge", "Lakeshore", "Redwood", "Ironbridge"),
        ("James", "Emily", "Michael", "Sarah", "David", "Jessica", "Robert", "Ashley", "Kevin", "Laura"),
        ("Miller", "Johnson", "Garcia", "Brown", "Davis", "Wilson", "Anderson", "Clark", "Lewis", "Young"),
        ("US", "CA"),
    ),
    "DE": _Country(
        ("Rhein", "Alpen", "Nordstern", "Elbe", "Isartal", "Schwarzwald", "Main", "Havel", "Spree", "Neckar",
         "Bodensee", "Harz"),
        ("GmbH", "AG", "GmbH & Co. KG"), "de", ("Rheinwerk", "Alpenblick", "Nordlicht", "Elbtal", "Isarwerk"),
        ("Thomas", "Julia", "Stefan", "Anna", "Markus", "Katrin", "Andreas", "Lena", "Jan", "Sabine"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Wagner", "Becker", "Hoffmann", "Schäfer"),
        ("AT", "CH", "DE"),
    ),
    "JP": _Country(
        ("Sakura", "Fuji", "Hikari", "Aozora", "Midori", "Kaze", "Minato", "Yamato", "Asahi", "Hoshi",
         "Kawasaki", "Umeda"),
        ("K.K.", "Co., Ltd."), "co.jp", ("Sakura", "Hikari", "Nihon", "Tokai", "Kansai"),
        ("Haruto", "Yui", "Sota", "Aoi", "Ren", "Hina", "Kenji", "Yuki", "Takeshi", "Mei"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi"),
        ("JP",),
    ),
    "KH": _Country(
        ("Angkor", "Mekong", "Tonle", "Bayon", "Kampot", "Preah", "Sisowath", "Kep"),
        ("Co., Ltd.",), "com.kh", ("Angkor",), ("Sokha", "Dara"), ("Chea", "Sok"), ("KH",),
    ),
}  # fmt: skip
_INTL_PARTNER_SECTORS = ("Systems", "Digital", "Solutions", "Technologies", "IT Services", "Networks", "Cloud")

# (sku, category, VND unit price, USD unit price in cents)
_CATALOGUE: dict[str, tuple[tuple[str, int, int], ...]] = {
    "software": (
        ("CRM-PRO-12M", 12_000_000, 45_000),
        ("CRM-ENT-12M", 30_000_000, 120_000),
        ("BI-ANALYTICS-12M", 18_000_000, 70_000),
        ("SEC-EDR-12M", 1_500_000, 6_000),
    ),
    "hardware": (
        ("SRV-R760-2U", 285_000_000, 1_150_000),
        ("NAS-TS873A", 62_000_000, 250_000),
        ("FW-FG100F", 98_000_000, 390_000),
        ("POS-TERM-A8", 9_500_000, 38_000),
    ),
    "services": (
        ("SVC-IMPL-DAY", 12_000_000, 120_000),
        ("SVC-TRAIN-CLASS", 25_000_000, 150_000),
        ("SVC-SUPPORT-12M", 80_000_000, 600_000),
    ),
}
_CATEGORY_SHARE = {"software": 5, "hardware": 4, "services": 2}
_PRODUCT_MIXES = (
    (("software",), 30),
    (("software", "services"), 25),
    (("hardware",), 10),
    (("hardware", "services"), 12),
    (("software", "hardware"), 8),
    (("software", "hardware", "services"), 10),
    (("services",), 5),
)
# Deal size ranges (minor units) by currency and partner size.
_DEAL_RANGE: dict[tuple[str, str], tuple[int, int]] = {
    ("VND", "large"): (250_000_000, 1_800_000_000),
    ("VND", "medium"): (80_000_000, 600_000_000),
    ("VND", "small"): (30_000_000, 250_000_000),
    ("USD", "large"): (1_500_000, 15_000_000),
    ("USD", "medium"): (500_000, 5_000_000),
    ("USD", "small"): (200_000, 2_000_000),
}
_REGISTRATIONS_PER_MONTH = {"large": 2.4, "medium": 1.1, "small": 0.5}
_SALES_PER_MONTH = {"large": 1.6, "medium": 0.6, "small": 0.2}
_TYPE_FACTOR = {"distributor": 1.2, "reseller": 1.0, "referral": 0.8, "agent": 0.7}
_MAX_TIER = {"large": 3, "medium": 2, "small": 1}
_TIERS = ("registered", "silver", "gold", "platinum")
_CAPACITY_MARGIN = 45  # the registered tier's cap is 50: keep room for the scenarios

# One cohort: (region, subregion, size).
_ROSTER: tuple[tuple[str, str | None, str], ...] = (
    ("VN", "HN", "large"), ("VN", "HN", "large"), ("VN", "HN", "medium"), ("VN", "HN", "medium"),
    ("VN", "HN", "small"), ("VN", "HN", "small"), ("VN", "HN", "small"),
    ("VN", "HCM", "large"), ("VN", "HCM", "large"), ("VN", "HCM", "medium"), ("VN", "HCM", "medium"),
    ("VN", "HCM", "medium"), ("VN", "HCM", "small"), ("VN", "HCM", "small"), ("VN", "HCM", "small"),
    ("VN", "DN", "medium"), ("VN", "DN", "small"), ("VN", "DN", "small"),
    ("SG", None, "large"), ("SG", None, "medium"), ("SG", None, "small"),
    ("TH", None, "medium"), ("TH", None, "small"),
    ("US", None, "large"), ("US", None, "medium"), ("US", None, "small"),
    ("DE", None, "medium"), ("DE", None, "small"),
    ("JP", None, "medium"), ("JP", None, "small"),
)  # fmt: skip

_ADMINS = ("lan.pham@prm.vn", "duc.le@prm.vn", "thao.nguyen@prm.vn", "sarah.koh@prm.sg")
_DIRECT_OWNERS = ("quang.do@prm.vn", "hanh.vu@prm.vn", "tuan.bui@prm.vn", "jessica.lim@prm.sg", "ryan.miller@prm.com")
_SYSTEM = "system:scheduler"
_PARTNER_REJECTIONS = (
    "Insufficient technical capability: no certified engineers and no reference projects",
    "Territory already covered by an exclusive distributor for this segment",
    "Incomplete application: business licence and tax registration certificate missing",
)
_LOST_REASONS = (
    "Customer chose a competitor on price",
    "Project cancelled after the customer's budget review",
    "Customer postponed the purchase to the next fiscal year",
    "Lost to the incumbent vendor",
)
_WITHDRAW_REASONS = (
    "Customer postponed the project",
    "Registered by mistake: duplicate of an internal lead",
    "Partner no longer pursuing the deal",
)
_REJECTIONS = (
    ("existing_customer", "Account already buys direct under an enterprise agreement"),
    ("direct_sales_active", "The direct sales team is running an active opportunity with this account"),
    ("insufficient_information", "Missing decision maker, budget and project scope"),
    ("other", "Public-sector tender: handled by the government sales team"),
)
_REFUND_REASONS = (
    "Seat count reduced after go-live",
    "Hardware returned under RMA",
    "Duplicate invoice corrected",
    "Services days not delivered",
)


# --------------------------------------------------------------------------
# Drafts: steps with provisional ids, numbered in time order when rendered
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """A provisional business id; rendered in order of first appearance."""

    kind: str
    key: int


@dataclass(frozen=True)
class _ConflictRef:
    kind: str
    first: _Ref
    second: _Ref


@dataclass(frozen=True)
class _Draft:
    at: datetime
    seq: int
    kind: str
    name: str
    args: dict[str, Any]


_ID_FORMATS = {
    "partner": "P-{n:04d}",
    "contract": "CT-{n:04d}",
    "registration": "R-{n:05d}",
    "sale": "S-{year}-{n:06d}",
    "refund": "RF-{year}-{n:05d}",
    "opportunity": "OPP-{year}-{n:05d}",
}


class _Builder:
    """Holds the random stream, the drafts and the customer registry of one generation."""

    def __init__(self, seed: int, start: date, quarters: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.start = datetime.combine(start, time(0), tzinfo=UTC)
        self.boundaries = [
            datetime.combine(_add_months(start, 3 * i), time(0), tzinfo=UTC) for i in range(quarters + 1)
        ]
        self.boundaries[0] = self.start
        self.end = self.boundaries[-1]
        self.horizon_days = (self.end - self.start).days
        self.drafts: list[_Draft] = []
        self.accounts = _AccountBook()
        self._keys: Counter[str] = Counter()
        self.partner_names: set[str] = set()
        self.partner_domains: set[str] = set()

    # ---- primitives -----------------------------------------------------
    def ref(self, kind: str) -> _Ref:
        self._keys[kind] += 1
        return _Ref(kind, self._keys[kind])

    def day(self, offset: float) -> date:
        return (self.start + timedelta(days=offset)).date()

    def when(self, day: date, region: str = "VN") -> datetime:
        """An instant during business hours of ``region`` on ``day``."""
        low, high = _HOURS.get(region, (1, 10))
        seconds = self.rng.randrange(low * 3600, high * 3600)
        return datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=seconds)

    def cmd(self, moment: datetime, name: str, /, **args: Any) -> None:
        """A command step at ``moment`` (dropped beyond the horizon, with everything after it)."""
        assert name in COMMANDS, name
        if moment <= self.end:
            self.drafts.append(_Draft(moment, len(self.drafts), COMMAND, name, args))

    def inbound(self, moment: datetime, type_: str, source: str, data: dict[str, Any]) -> None:
        if moment <= self.end:
            self.drafts.append(_Draft(moment, len(self.drafts), INBOUND, type_, {"source": source, **data}))

    def admin(self) -> str:
        return self.rng.choice(_ADMINS)

    # ---- programme-wide steps --------------------------------------------
    def programme(self) -> None:
        at = self.start + timedelta(hours=1)
        self.cmd(at, "create_plan", plan_id=PLAN_ID, name="Standard partner commission plan", actor=_ADMINS[0])
        self.cmd(
            at + timedelta(minutes=5),
            "publish_plan_version",
            plan_id=PLAN_ID,
            effective_from=self.start,
            terms={},
            actor=_ADMINS[0],
            reason="Launch of the partner programme with the standard terms",
            at=at + timedelta(minutes=5),
        )
        quarters = len(self.boundaries) - 1
        if quarters >= 2:
            effective = self.boundaries[quarters // 2]
            published = self.when((effective - timedelta(days=14)).date())
            self.cmd(
                published,
                "publish_plan_version",
                plan_id=PLAN_ID,
                effective_from=effective,
                terms={
                    "category_rates_bps": {
                        "services": {"registered": 700, "silver": 1000, "gold": 1200, "platinum": 1500}
                    }
                },
                actor=_ADMINS[0],
                reason="Higher rates on services to grow partner-delivered implementation",
                at=published,
            )

    def quarter_ends(self) -> None:
        for boundary in self.boundaries[1:]:
            self.cmd(boundary, "expire_registrations", at=boundary)

    def first_boundary_at_or_after(self, at: datetime) -> datetime | None:
        for boundary in self.boundaries[1:]:
            if boundary >= at:
                return boundary
        return None

    # ---- rendering --------------------------------------------------------
    def render(self) -> list[Step]:
        names: dict[_Ref, str] = {}
        counters: Counter[tuple[str, int]] = Counter()
        namespace = uuid5(_SAMPLE_NAMESPACE, f"seed:{self.seed}")

        def resolve(value: Any, at: datetime, wire: bool) -> Any:
            if isinstance(value, _Ref):
                if value not in names:
                    year = at.year if "{year}" in _ID_FORMATS[value.kind] else 0
                    counters[(value.kind, year)] += 1
                    names[value] = _ID_FORMATS[value.kind].format(n=counters[(value.kind, year)], year=year)
                return names[value]
            if isinstance(value, _ConflictRef):
                return conflict_id(value.kind, resolve(value.first, at, wire), resolve(value.second, at, wire))
            if isinstance(value, dict):
                return {key: resolve(item, at, wire) for key, item in value.items()}
            if isinstance(value, list):
                return [resolve(item, at, wire) for item in value]
            if wire and isinstance(value, datetime):
                return _iso(value)
            return value

        steps = []
        for draft in sorted(self.drafts, key=lambda d: (d.at, d.seq)):
            wire = draft.kind == INBOUND
            args = resolve(draft.args, draft.at, wire)
            if wire:
                key = args.get("refund_id") or args.get("sale_id") or args.get("opportunity_id")
                args = {"id": str(uuid5(namespace, f"{draft.name}:{key}")), **args}
            steps.append(Step(kind=draft.kind, name=draft.name, args=args, at=draft.at))
        return steps


# --------------------------------------------------------------------------
# Customers: every account is unique unless a scenario wants a match
# --------------------------------------------------------------------------


class _AccountBook:
    """Customer records that never match one another by accident (domain, tax id or name)."""

    NAME_CUTOFF = 88.0  # the matching threshold is 92; keep a margin

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = defaultdict(list)
        self.domains: set[str] = set()
        self.tax_keys: set[str] = set()

    def free_name(self, customer: dict[str, Any]) -> bool:
        name = normalise_name(customer["name"])
        taken = self.names[customer["country"]]
        if name in taken:
            return False
        match = process.extractOne(
            name, taken, scorer=fuzz.token_sort_ratio, processor=None, score_cutoff=self.NAME_CUTOFF
        )
        return match is None

    def free(self, customer: dict[str, Any]) -> bool:
        if not self.free_name(customer):
            return False
        domain = normalise_domain(customer["domain"])
        if domain is not None and domain in self.domains:
            return False
        return not (self._tax_keys(customer) & self.tax_keys)

    def reserve(self, customer: dict[str, Any]) -> dict[str, Any]:
        self.names[customer["country"]].append(normalise_name(customer["name"]))
        domain = normalise_domain(customer["domain"])
        if domain is not None:
            self.domains.add(domain)
        self.tax_keys |= self._tax_keys(customer)
        return customer

    @staticmethod
    def _tax_keys(customer: dict[str, Any]) -> set[str]:
        raw = customer["tax_id"]
        keys = {normalise_tax_id(raw), tax_id_key(raw, customer["country"]), tax_id_key(raw, None)}
        return {key for key in keys if key is not None}

    def new(self, rng: random.Random, country: str, subregion: str | None = None) -> dict[str, Any]:
        for attempt in range(400):
            candidate = (
                _vn_customer(rng, subregion, long=attempt > 200)
                if country == "VN"
                else _intl_customer(rng, country, long=attempt > 200)
            )
            if self.free(candidate):
                return self.reserve(candidate)
        raise RuntimeError(f"could not find a fresh customer name in {country}")  # pragma: no cover


def _vn_customer(rng: random.Random, subregion: str | None, *, long: bool = False) -> dict[str, Any]:
    legal = rng.choices(_VN_LEGAL, _VN_LEGAL_WEIGHTS)[0]
    industry, suffix = rng.choice(_VN_INDUSTRIES)
    first, second = rng.sample(_VN_SYLLABLES, 2)
    brand = f"{first} {second}"
    if long:
        brand += " " + rng.choice(_VN_CITIES[subregion or rng.choice(("HN", "HCM", "DN"))])
    tld = rng.choice(("vn", "com.vn", "com.vn"))
    domain = f"{_slug(brand)}{suffix}.{tld}" if rng.random() < 0.7 else f"{_slug(brand)}-{suffix}.{tld}"
    prefix = _VN_TAX_PREFIX.get(subregion or "", rng.choice(("01", "03", "04", "02", "05")))
    tax_id = prefix + "".join(rng.choice("0123456789") for _ in range(8))
    return {"name": f"{legal} {industry} {brand}", "domain": domain, "tax_id": tax_id, "country": "VN"}


def _intl_customer(rng: random.Random, country: str, *, long: bool = False) -> dict[str, Any]:
    spec = _COUNTRIES[country]
    place = rng.choice(spec.places)
    second = rng.choice(_EN_SECONDS)
    if second:
        place = f"{place} {second}"
    if long:
        place = f"{place} {rng.choice(('North', 'South', 'East', 'West', 'Central', 'United', 'Premier'))}"
    industry = rng.choice(_EN_INDUSTRIES)
    legal = rng.choice(spec.legal)
    domain = f"{_slug(place)}{_slug(industry)}.{spec.tld}"
    tax_id: str | None
    digits = "0123456789"
    if rng.random() < 0.25:
        tax_id = None
    elif country == "SG":
        tax_id = f"{rng.randint(2005, 2023)}{rng.randint(10000, 99999)}{rng.choice('CDEGHKMNRWZ')}"
    elif country == "TH":
        tax_id = "0105" + "".join(rng.choice(digits) for _ in range(9))
    elif country == "US":
        tax_id = f"{rng.randint(10, 99)}-{rng.randint(1000000, 9999999)}"
    elif country == "DE":
        tax_id = f"DE{rng.randint(100000000, 999999999)}"
    elif country == "JP":
        tax_id = str(rng.randint(10**12, 10**13 - 1))
    else:
        tax_id = f"K{rng.randint(100, 999)}-{rng.randint(100000000, 999999999)}"
    return {"name": f"{place} {industry} {legal}", "domain": domain, "tax_id": tax_id, "country": country}


def _core(name: str) -> str:
    """A Vietnamese company name without its legal form."""
    for prefix in sorted(_VN_LEGAL, key=len, reverse=True):
        if name.startswith(prefix + " "):
            return name[len(prefix) + 1 :]
    return name


def _name_variant(customer: dict[str, Any], legal: str) -> str:
    """The customer's name as a foreign system spells it: unaccented, with an English legal form."""
    return f"{_ascii(_core(customer['name']))} {legal}"


# --------------------------------------------------------------------------
# Partners and registrations as the generator sees them
# --------------------------------------------------------------------------


@dataclass
class _Partner:
    ref: _Ref
    region: str
    subregion: str | None
    size: str
    type: str
    name: str = ""
    domain: str = ""
    people: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)
    late: bool = False
    applied_at: datetime | None = None
    approved_at: datetime | None = None
    active_from: datetime | None = None
    contract: _Ref | None = None
    contract_ends: date | None = None
    suspension: tuple[datetime, datetime] | None = None
    terminated_at: datetime | None = None
    tier: int = 0
    accounts: list[dict[str, Any]] = field(default_factory=list)
    registrations: list[_Registration] = field(default_factory=list)

    @property
    def currency(self) -> str:
        return "VND" if self.region == "VN" else "USD"

    @property
    def territory(self) -> list[str]:
        return ["VN"] if self.region == "VN" else list(_COUNTRIES[self.region].territory)

    @property
    def contact(self) -> str:
        return self.emails[0]

    def source(self, rng: random.Random) -> str:
        if rng.random() < 0.15:
            return rng.choice(("shop/web", "billing/subscriptions"))
        if self.region == "VN":
            return {"HN": "erp/hanoi", "HCM": "erp/hcm", "DN": "erp/danang"}[self.subregion or "HN"]
        return "erp/global"

    def open_at(self, at: datetime) -> int:
        return sum(1 for r in self.registrations if r.submitted_at <= at and (r.closed_at is None or r.closed_at > at))

    def can_register(self, at: datetime, until: datetime) -> bool:
        if self.active_from is None or at <= self.active_from + timedelta(days=1) or at >= until:
            return False
        if self.suspension is not None and self.suspension[0] - timedelta(days=10) <= at <= self.suspension[1]:
            return False
        return self.open_at(at) < _CAPACITY_MARGIN


@dataclass
class _Registration:
    ref: _Ref
    partner: _Partner
    customer: dict[str, Any]
    value: int
    products: tuple[str, ...]
    submitted_at: datetime
    approved_at: datetime | None = None
    protected_until: datetime | None = None
    closed_at: datetime | None = None


@dataclass
class _Sale:
    ref: _Ref
    published: datetime  # when the sale message is recorded (after ``occurred_at``, late for some)
    total: int
    currency: str
    source: str
    lines: list[dict[str, Any]]


class _Cohort:
    """About thirty partners with their whole history, plus some direct business."""

    def __init__(self, builder: _Builder, index: int) -> None:
        self.b = builder
        self.rng = builder.rng
        self.index = index
        self.partners: list[_Partner] = []
        self.participants: list[_Partner] = []  # normal Vietnamese partners that play the conflict scenarios
        self.late_reporter: _Partner | None = None  # whose ERP reports one sale weeks late
        self.sales: list[_Sale] = []

    # ---- orchestration -------------------------------------------------
    def generate(self) -> None:
        self.roster()
        for partner in self.partners:
            self.lifecycle(partner)
        self.scenarios()
        normal = [p for p in self.partners if not p.roles and not p.late and p not in self.participants]
        self.late_reporter = normal[0] if normal else None
        for partner in self.partners:
            self.registrations(partner)
            self.partner_sales(partner)
        self.overrides()
        self.direct_business()
        self.refunds()

    def frac(self, low: float, high: float) -> float:
        """A day offset between two fractions of the horizon."""
        return self.rng.uniform(low, high) * self.b.horizon_days

    # ---- roster and roles ------------------------------------------------
    def roster(self) -> None:
        rng = self.rng
        large = [i for i, row in enumerate(_ROSTER) if row[2] == "large"]
        others = [i for i in range(len(_ROSTER)) if i not in large]
        types: dict[int, str] = {}
        for indices, pool in (
            (large, ["distributor"] * 3 + ["reseller"] * 3),
            (others, ["reseller"] * 9 + ["referral"] * 8 + ["agent"] * 6 + ["distributor"]),
        ):
            rng.shuffle(pool)
            types.update(zip(indices, pool, strict=False))
        for i, (region, subregion, size) in enumerate(_ROSTER):
            partner = _Partner(self.b.ref("partner"), region, subregion, size, types[i])
            self.name_partner(partner, literal=self.index == 0 and i in (0, 7))
            self.partners.append(partner)

        def pick(candidates: list[_Partner], count: int, role: str) -> list[_Partner]:
            chosen = rng.sample(candidates, min(count, len(candidates)))
            for partner in chosen:
                partner.roles.add(role)
            return chosen

        def free(*sizes: str, region: str | None = None) -> list[_Partner]:
            return [
                p
                for p in self.partners
                if not p.roles and p.size in sizes and (region is None or (p.region == "VN") == (region == "VN"))
            ]

        pick(free("small"), 2, "rejected")
        pick(free("small", "medium"), rng.choice((1, 2)), "onboarding")
        pick(free("medium", region="VN"), 1, "suspended")
        pick(free("small", "medium"), 1, "terminated")
        pick(free("small", "medium"), 1, "expiring")
        pick(free("small", "medium"), 1, "overdue")
        pick(free("medium", "small", region="VN"), 1, "segment")
        normal_vn = [p for p in self.partners if p.region == "VN" and not (p.roles - {"segment"})]
        self.participants = rng.sample(normal_vn, min(9, len(normal_vn)))
        late_pool = [p for p in self.partners if not p.roles and p.size != "large" and p not in self.participants]
        for partner in rng.sample(late_pool, min(6, len(late_pool))):
            partner.late = True

    def name_partner(self, partner: _Partner, *, literal: bool) -> None:
        rng = self.rng
        for _ in range(200):
            if partner.region == "VN":
                legal = rng.choice(("Công ty TNHH", "Công ty Cổ phần"))
                sector, slug = rng.choice(_VN_PARTNER_SECTORS)
                if rng.random() < 0.35:
                    brand = rng.choice(_VN_CITIES[partner.subregion or "HN"])
                else:
                    brand = " ".join(rng.sample(_VN_SYLLABLES, 2))
                if literal:
                    legal, sector, slug, brand = (
                        ("Công ty TNHH", "Giải pháp Số", "digital", "Hà Nội")
                        if partner.subregion == "HN"
                        else ("Công ty Cổ phần", "Công nghệ", "tech", "Sao Việt")
                    )
                name = f"{legal} {sector} {brand}"
                domain = f"{_slug(brand)}{slug}.{rng.choice(('vn', 'com.vn'))}"
            else:
                spec = _COUNTRIES[partner.region]
                words = f"{rng.choice(spec.partner_words)} {rng.choice(_INTL_PARTNER_SECTORS)}"
                name = f"{words} {rng.choice(spec.legal)}"
                domain = f"{_slug(words)}.{spec.tld}"
            if name not in self.b.partner_names and domain not in self.b.partner_domains:
                break
            literal = False
        self.b.partner_names.add(name)
        self.b.partner_domains.add(domain)
        partner.name, partner.domain = name, domain
        count = {"large": 6, "medium": 3, "small": 2}[partner.size] + rng.randint(0, 1)
        while len(partner.people) < count:
            person, email = self.person(partner)
            if person not in partner.people:
                partner.people.append(person)
                partner.emails.append(email)

    def person(self, partner: _Partner) -> tuple[str, str]:
        rng = self.rng
        if partner.region == "VN":
            family, middle, given = rng.choice(_VN_FAMILY), rng.choice(_VN_MIDDLE), rng.choice(_VN_GIVEN)
            return f"{family} {middle} {given}", f"{_slug(given)}.{_slug(family)}@{partner.domain}"
        spec = _COUNTRIES[partner.region]
        first, last = rng.choice(spec.first_names), rng.choice(spec.last_names)
        return f"{first} {last}", f"{_slug(first)}.{_slug(last)}@{partner.domain}"

    # ---- lifecycle ---------------------------------------------------------
    def lifecycle(self, p: _Partner) -> None:
        b, rng = self.b, self.rng
        applied_day = rng.uniform(60, 220) if p.late else rng.uniform(1, 45)
        applied = b.when(b.day(min(applied_day, 0.4 * b.horizon_days)), p.region)
        p.applied_at = applied
        b.cmd(
            applied,
            "apply_partner",
            partner_id=p.ref,
            name=p.name,
            type=p.type,
            region=p.region,
            subregion=p.subregion,
            size=p.size,
            contact_email=p.contact,
            actor=p.contact,
            at=applied,
        )
        decided = b.when(applied.date() + timedelta(days=rng.randint(2, 9)))
        if "rejected" in p.roles:
            b.cmd(
                decided,
                "reject_partner",
                partner_id=p.ref,
                actor=b.admin(),
                reason=rng.choice(_PARTNER_REJECTIONS),
                at=decided,
            )
            return
        p.approved_at = decided
        b.cmd(
            decided,
            "approve_partner",
            partner_id=p.ref,
            actor=b.admin(),
            reason="Meets the partner programme criteria",
            at=decided,
        )
        signed = b.when(decided.date() + timedelta(days=rng.randint(4, 18)), p.region)
        late_training = "overdue" in p.roles
        trained = b.when(
            decided.date() + timedelta(days=rng.randint(38, 50) if late_training else rng.randint(3, 20)), p.region
        )
        left = "onboarding" in p.roles
        no_training = left and rng.random() < 0.6
        no_contract = left and not no_training
        if not no_contract:
            self.contract(p, signed)
        if not no_training:
            b.cmd(
                trained,
                "record_training",
                partner_id=p.ref,
                course=ONBOARDING_COURSE,
                person=p.people[0],
                actor=p.contact,
                at=trained,
            )
        if left:
            return
        p.active_from = max(signed, trained)
        self.people_development(p)
        if "suspended" in p.roles:
            suspended = b.when(b.day(self.frac(0.45, 0.55)))
            reinstated = b.when(suspended.date() + timedelta(days=rng.randint(21, 45)))
            if suspended > p.active_from + timedelta(days=30):
                p.suspension = (suspended, reinstated)
                b.cmd(
                    suspended,
                    "suspend_partner",
                    partner_id=p.ref,
                    actor=b.admin(),
                    reason="Distributor invoices overdue by more than 60 days",
                    at=suspended,
                )
                b.cmd(
                    reinstated,
                    "reinstate_partner",
                    partner_id=p.ref,
                    actor=b.admin(),
                    reason="Payment plan agreed and overdue balance settled",
                    at=reinstated,
                )
        if "terminated" in p.roles:
            terminated = b.when(b.day(self.frac(0.7, 0.8)))
            if terminated > p.active_from + timedelta(days=60):
                p.terminated_at = terminated
                b.cmd(
                    terminated,
                    "terminate_contract",
                    contract_id=p.contract,
                    actor=b.admin(),
                    reason="Partner agreement terminated for repeated breach of the pricing policy",
                    effective_on=terminated.date(),
                    at=terminated,
                )
                b.cmd(
                    terminated + timedelta(minutes=2),
                    "terminate_partner",
                    partner_id=p.ref,
                    actor=b.admin(),
                    reason="Repeated breach of the pricing policy after two written warnings",
                    at=terminated + timedelta(minutes=2),
                )
        if "segment" in p.roles:
            changed = b.when(b.day(self.frac(0.35, 0.6)))
            if changed > p.active_from:
                size = "medium" if p.size == "small" else "large"
                b.cmd(changed, "change_segment", partner_id=p.ref, actor=b.admin(), size=size, at=changed)

    def contract(self, p: _Partner, signed: datetime) -> None:
        b, rng = self.b, self.rng
        p.contract = contract = b.ref("contract")
        starts = signed.date()
        years = 2 if p.size == "large" else 1
        expiring = "expiring" in p.roles
        auto_renew = not expiring and rng.random() < 0.6
        ends = date(starts.year + years, starts.month, min(starts.day, 28)) - timedelta(days=1)
        b.cmd(
            signed,
            "sign_contract",
            contract_id=contract,
            partner_id=p.ref,
            starts_on=starts,
            ends_on=ends,
            auto_renew=auto_renew,
            territory=p.territory,
            terms=f"{p.type.capitalize()} agreement {starts.year} ({', '.join(p.territory)}), standard terms v3",
            commission_plan_id=PLAN_ID,
            actor=b.admin(),
            at=signed,
        )
        if expiring:
            p.contract_ends = ends
            expired = b.when(ends + timedelta(days=rng.randint(1, 5)))
            b.cmd(expired, "expire_contract", contract_id=contract, actor=_SYSTEM, at=expired)
        elif "terminated" not in p.roles:
            # Renewed by hand a few weeks before each end, for the same length (both end days count).
            term = ends - starts + timedelta(days=1)
            current = ends
            while current < b.end.date():
                renewed = b.when(current - timedelta(days=rng.randint(10, 25)))
                b.cmd(
                    renewed, "renew_contract", contract_id=contract, actor=b.admin(), ends_on=current + term, at=renewed
                )
                current += term
        if p.region == "VN" and p.type == "distributor" and rng.random() < 0.5:
            amended = b.when(b.day(self.frac(0.3, 0.6)))
            if amended > signed and (not expiring or amended.date() <= ends):
                b.cmd(
                    amended,
                    "amend_contract",
                    contract_id=contract,
                    actor=b.admin(),
                    reason="Territory extended to Laos and Cambodia after the business review",
                    territory=["VN", "LA", "KH"],
                    at=amended,
                )

    def people_development(self, p: _Partner) -> None:
        """Training and certifications: large partners certify most of their people."""
        b, rng = self.b, self.rng
        assert p.active_from is not None
        certified = {"large": rng.randint(4, 5), "medium": 2, "small": rng.randint(0, 1)}[p.size]
        for index, person in enumerate(p.people):
            trained = b.when(p.active_from.date() + timedelta(days=rng.randint(5, 90)), p.region)
            course = "sales-fundamentals" if index % 2 == 0 else "solution-architecture"
            b.cmd(
                trained, "record_training", partner_id=p.ref, course=course, person=person, actor=p.contact, at=trained
            )
            if index < certified:
                granted = b.when(trained.date() + timedelta(days=rng.randint(3, 30)), p.region)
                cert = "PRM-CSP" if course == "sales-fundamentals" else "PRM-CTE"
                valid = 365 if rng.random() < 0.4 else 730
                b.cmd(
                    granted,
                    "grant_certification",
                    partner_id=p.ref,
                    cert=cert,
                    person=person,
                    actor=b.admin(),
                    expires_at=granted + timedelta(days=valid),
                    granted_at=granted,
                )

    def registration_until(self, p: _Partner) -> datetime:
        until = self.b.end
        if p.contract_ends is not None:
            until = min(until, datetime.combine(p.contract_ends, time(0), tzinfo=UTC))
        if p.terminated_at is not None:
            until = min(until, p.terminated_at - timedelta(days=120))
        return until

    # ---- registrations -------------------------------------------------------
    def submit(
        self, p: _Partner, at: datetime, customer: dict[str, Any], value: int, products: tuple[str, ...]
    ) -> _Registration:
        reg = _Registration(self.b.ref("registration"), p, customer, value, products, at)
        p.registrations.append(reg)
        self.b.cmd(
            at,
            "submit_registration",
            registration_id=reg.ref,
            partner_id=p.ref,
            customer=dict(customer),
            estimated_value_minor=value,
            currency=p.currency,
            products=list(products),
            actor=p.contact,
            expected_close_on=at.date() + timedelta(days=self.rng.randint(30, 120)),
            submitted_at=at,
        )
        return reg

    def approve(self, reg: _Registration, at: datetime) -> None:
        reg.approved_at = at
        reg.protected_until = at + timedelta(days=90)
        reg.closed_at = self.b.first_boundary_at_or_after(reg.protected_until)  # expired unless closed earlier
        self.b.cmd(at, "approve_registration", registration_id=reg.ref, actor=self.b.admin(), at=at)

    def close(self, reg: _Registration, at: datetime) -> None:
        reg.closed_at = at

    def reject(self, reg: _Registration, at: datetime, code: str, reason: str | None) -> None:
        self.close(reg, at)
        self.b.cmd(
            at,
            "reject_registration",
            registration_id=reg.ref,
            actor=self.b.admin(),
            reason_code=code,
            reason=reason,
            at=at,
        )

    def withdraw(self, reg: _Registration, at: datetime, reason: str | None) -> None:
        self.close(reg, at)
        self.b.cmd(
            at, "withdraw_registration", registration_id=reg.ref, actor=reg.partner.contact, reason=reason, at=at
        )

    def lose(self, reg: _Registration, at: datetime) -> None:
        self.close(reg, at)
        self.b.cmd(
            at,
            "mark_registration_lost",
            registration_id=reg.ref,
            actor=reg.partner.contact,
            reason=self.rng.choice(_LOST_REASONS),
            at=at,
        )

    def win(self, reg: _Registration, at: datetime) -> _Sale:
        self.close(reg, at)
        amount = int(reg.value * self.rng.uniform(0.8, 1.1))
        return self.sale(reg.partner, at, reg.customer, amount, reg.products, registration=reg)

    def after(self, at: datetime, low: int, high: int, region: str = "VN") -> datetime:
        return self.b.when(at.date() + timedelta(days=self.rng.randint(low, high)), region)

    def products(self) -> tuple[str, ...]:
        mixes = [mix for mix, _ in _PRODUCT_MIXES]
        weights = [weight for _, weight in _PRODUCT_MIXES]
        return self.rng.choices(mixes, weights)[0]

    def deal_value(self, currency: str, size: str) -> int:
        low, high = _DEAL_RANGE[(currency, size)]
        value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        step = 1_000_000 if currency == "VND" else 10_000
        return max(step, int(value // step) * step)

    def registrations(self, p: _Partner) -> None:
        if p.active_from is None:
            return
        b, rng = self.b, self.rng
        p.accounts.extend(
            b.accounts.new(rng, p.region, p.subregion) for _ in range({"large": 20, "medium": 10, "small": 5}[p.size])
        )
        rate = _REGISTRATIONS_PER_MONTH[p.size] * _TYPE_FACTOR[p.type] / 30
        until = self.registration_until(p)
        t = p.active_from + timedelta(days=2)
        while True:
            t += timedelta(days=rng.expovariate(rate))
            at = b.when(t.date(), p.region)
            if at >= until:
                break
            if p.can_register(at, until):
                self.regular_registration(p, at)

    def regular_registration(self, p: _Partner, at: datetime) -> None:
        rng = self.rng
        reg = self.submit(p, at, rng.choice(p.accounts), self.deal_value(p.currency, p.size), self.products())
        decided = self.after(at, 1, 6)
        roll = rng.random()
        if roll < 0.03:
            self.withdraw(reg, decided, rng.choice(_WITHDRAW_REASONS))
            return
        if roll < 0.11:
            code, reason = rng.choice(_REJECTIONS)
            self.reject(reg, decided, code, reason if code == "other" or rng.random() < 0.7 else None)
            return
        self.approve(reg, decided)
        roll = rng.random()
        if roll < 0.60:
            sale_at = self.after(decided, 5, 85, p.region)
            self.win(reg, sale_at)
            if rng.random() < 0.15:
                again = self.after(sale_at, 3, 20, p.region)
                if reg.protected_until is not None and again < reg.protected_until - timedelta(days=1):
                    self.sale(
                        p, again, reg.customer, int(reg.value * rng.uniform(0.1, 0.4)), ("services",), registration=reg
                    )
        elif roll < 0.62:
            extended = self.after(decided, 70, 85)
            self.b.cmd(
                extended,
                "extend_protection",
                registration_id=reg.ref,
                actor=self.b.admin(),
                reason="Customer board approval delayed; partner still engaged",
                at=extended,
            )
            assert reg.protected_until is not None
            reg.protected_until += timedelta(days=30)
            reg.closed_at = self.b.first_boundary_at_or_after(reg.protected_until)
            self.win(reg, self.after(decided, 95, 115, p.region))
        elif roll < 0.77:
            self.lose(reg, self.after(decided, 10, 85))
        elif roll < 0.81:
            self.withdraw(reg, self.after(decided, 5, 60), rng.choice(_WITHDRAW_REASONS))
        # else: nothing happens and the registration expires at the quarter end after its protection

    # ---- sales -----------------------------------------------------------------
    def lines(self, currency: str, amount: int, categories: tuple[str, ...]) -> list[dict[str, Any]]:
        rng = self.rng
        weights = sum(_CATEGORY_SHARE[c] for c in categories)
        result = []
        for category in categories:
            share = amount * _CATEGORY_SHARE[category] // weights
            sku, vnd, usd = rng.choice(_CATALOGUE[category])
            price = vnd if currency == "VND" else usd
            quantity = max(1, round(share / price))
            if quantity > 40 and category == "hardware":  # prefer the big boxes for big hardware deals
                sku, vnd, usd = _CATALOGUE["hardware"][0]
                price = vnd if currency == "VND" else usd
                quantity = max(1, round(share / price))
            result.append(
                {
                    "sku": sku,
                    "category": category,
                    "quantity": quantity,
                    "unit_price_minor": price,
                    "currency": currency,
                }
            )
        return result

    def sale(
        self,
        p: _Partner | None,
        at: datetime,
        customer: dict[str, Any],
        amount: int,
        categories: tuple[str, ...],
        *,
        registration: _Registration | None = None,
        currency: str | None = None,
        source: str | None = None,
        delay: timedelta | None = None,
    ) -> _Sale:
        rng = self.rng
        currency = currency or (p.currency if p is not None else "VND")
        lines = self.lines(currency, amount, categories)
        source = source or (
            p.source(rng) if p is not None else rng.choice(("shop/web", "billing/subscriptions", "erp/hanoi"))
        )
        published = at + (delay or timedelta(seconds=rng.randint(2, 120)))
        total = sum(x["quantity"] * x["unit_price_minor"] for x in lines)
        sale = _Sale(self.b.ref("sale"), published, total, currency, source, lines)
        self.sales.append(sale)
        self.b.inbound(
            published,
            SALE_RECORDED,
            source,
            {
                "sale_id": sale.ref,
                "partner_id": p.ref if p is not None else None,
                "registration_id": registration.ref if registration is not None else None,
                "customer": dict(customer),
                "lines": lines,
                "occurred_at": at,
            },
        )
        return sale

    def partner_sales(self, p: _Partner) -> None:
        """Sales without a registration: repeat business with the partner's accounts."""
        if p.active_from is None or not p.accounts:
            return
        b, rng = self.b, self.rng
        until = min(b.end, p.terminated_at or b.end)
        rate = _SALES_PER_MONTH[p.size] * _TYPE_FACTOR[p.type] / 30
        t = p.active_from + timedelta(days=5)
        while True:
            t += timedelta(days=rng.expovariate(rate))
            at = b.when(t.date(), p.region)
            if at >= until:
                break
            self.sale(p, at, rng.choice(p.accounts), self.deal_value(p.currency, p.size), self.products())
        if p is self.late_reporter:
            # A sale reported late: it occurred 40-50 days before it was recorded.
            at = b.when(b.day(self.frac(0.3, 0.5)), p.region)
            if at > p.active_from:
                self.sale(
                    p,
                    at,
                    rng.choice(p.accounts),
                    self.deal_value(p.currency, p.size),
                    ("software",),
                    delay=timedelta(days=rng.randint(40, 50)),
                )
        if p.terminated_at is not None:
            # The ERP still books a sale for the terminated partner: it earns nothing.
            at = self.after(p.terminated_at, 5, 15, p.region)
            self.sale(p, at, rng.choice(p.accounts), self.deal_value(p.currency, p.size), ("hardware",))

    def refunds(self) -> None:
        rng = self.rng
        for sale in self.sales:
            if rng.random() >= 0.08:
                continue
            first = self.after(sale.published, 3, 25)
            roll = rng.random()
            if roll < 0.4:
                self.refund(sale, first, sale.total, "Order cancelled by the customer")
                continue
            line = rng.choice(sale.lines)
            amount = line["unit_price_minor"] * max(1, line["quantity"] // rng.choice((2, 3, 4)))
            if amount >= sale.total:
                amount = sale.total // 2
            self.refund(sale, first, amount, rng.choice(_REFUND_REASONS))
            if roll > 0.8:
                self.refund(sale, self.after(first, 10, 40), sale.total - amount, "Remaining order cancelled")

    def refund(self, sale: _Sale, at: datetime, amount: int, reason: str) -> None:
        refund = self.b.ref("refund")
        published = at + timedelta(seconds=self.rng.randint(2, 120))
        self.b.inbound(
            published,
            SALE_REFUNDED,
            sale.source,
            {
                "sale_id": sale.ref,
                "refund_id": refund,
                "amount_minor": amount,
                "currency": sale.currency,
                "occurred_at": at,
                "reason": reason,
            },
        )

    # ---- direct business ---------------------------------------------------------
    def direct_business(self) -> None:
        b, rng = self.b, self.rng
        countries = ["VN"] * 7 + ["SG", "US", "TH"]
        accounts = [b.accounts.new(rng, country, rng.choice(("HN", "HCM", "DN"))) for country in countries * 2]
        t = b.start + timedelta(days=10)
        while True:
            t += timedelta(days=rng.expovariate(2.0 / 30))
            opened = b.when(t.date())
            if opened >= b.end:
                break
            customer = rng.choice(accounts)
            self.opportunity(
                opened, customer, self.deal_value("VND" if customer["country"] == "VN" else "USD", "medium")
            )
        t = b.start + timedelta(days=5)
        while True:
            t += timedelta(days=rng.expovariate(3.0 / 30))
            at = b.when(t.date())
            if at >= b.end:
                break
            customer = rng.choice(accounts)
            currency = "VND" if customer["country"] == "VN" else "USD"
            self.sale(
                None,
                at,
                customer,
                self.deal_value(currency, rng.choice(("small", "medium"))),
                self.products(),
                currency=currency,
            )

    def opportunity(self, at: datetime, customer: dict[str, Any], value: int) -> _Ref:
        opportunity = self.b.ref("opportunity")
        self.b.inbound(
            at + timedelta(seconds=self.rng.randint(2, 60)),
            OPPORTUNITY_OPENED,
            "crm/salesforce",
            {
                "opportunity_id": opportunity,
                "owner": self.rng.choice(_DIRECT_OWNERS),
                "customer": dict(customer),
                "estimated_value_minor": value,
                "currency": "VND" if customer["country"] == "VN" else "USD",
                "opened_at": at,
            },
        )
        return opportunity

    # ---- tiers -----------------------------------------------------------------------
    def overrides(self) -> None:
        b, rng = self.b, self.rng
        quarters = len(b.boundaries) - 1
        demoted = False
        for q in range(1, quarters):
            effective = b.boundaries[q]
            decided = b.when((effective - timedelta(days=rng.randint(2, 6))).date())
            eligible = [
                p
                for p in self.partners
                if p.active_from is not None
                and p.active_from < decided
                and (p.terminated_at is None or p.terminated_at > decided)
            ]
            promotable = [p for p in eligible if p.tier < _MAX_TIER[p.size]]
            promotable.sort(key=lambda p: ({"large": 0, "medium": 1, "small": 2}[p.size], p.ref.key))
            # One large partner (favouring those already promoted) and one other partner per quarter.
            large = [p for p in promotable if p.size == "large"]
            others = [p for p in promotable if p.size != "large"]
            promoted: list[_Partner] = []
            if large:
                leader = max(large, key=lambda p: (p.tier, -p.ref.key))
                promoted.append(leader if rng.random() < 0.6 else rng.choice(large))
            promoted += rng.sample(others, min(1, len(others)))
            for p in promoted:
                p.tier += 1
                reason = (
                    f"Quarterly business review: pipeline and certified staff support {_TIERS[p.tier]};"
                    " set by override until automatic evaluation is live"
                )
                b.cmd(
                    decided,
                    "override_tier",
                    partner_id=p.ref,
                    tier=_TIERS[p.tier],
                    actor=b.admin(),
                    reason=reason,
                    effective_at=effective,
                )
            if not demoted and q >= max(1, quarters - 2):
                down = [p for p in eligible if p.tier > 0 and p not in promoted]
                if down:
                    p = rng.choice(down)
                    p.tier -= 1
                    demoted = True
                    b.cmd(
                        decided + timedelta(minutes=3),
                        "override_tier",
                        partner_id=p.ref,
                        tier=_TIERS[p.tier],
                        actor=b.admin(),
                        reason="Quarterly business review: no deal closed in the last two quarters",
                        effective_at=effective,
                    )

    # ---- deliberate channel conflicts ----------------------------------------------
    def scenarios(self) -> None:
        """Each conflict scenario uses its own partners and accounts (cycling if few)."""
        people = self.participants
        if len(people) < 2:
            return

        def two(i: int) -> tuple[_Partner, _Partner]:
            return people[(2 * i) % len(people)], people[(2 * i + 1) % len(people)]

        self.name_variant_conflict(*two(0))
        self.domain_conflict(*two(1))
        self.tax_id_conflict(*two(2))
        self.sale_outside_registration(*two(3))
        self.direct_on_protected(people[8 % len(people)])

    def scenario_start(self, low: float, high: float, *partners: _Partner) -> datetime | None:
        b = self.b
        day = self.frac(low, high)
        ready = [p.active_from for p in partners]
        if any(r is None for r in ready):
            return None
        start = max([b.start + timedelta(days=day)] + [r + timedelta(days=5) for r in ready if r is not None])
        return b.when(start.date())

    def vn_account(self, literal: dict[str, Any] | None) -> dict[str, Any]:
        if literal is not None and self.index == 0 and self.b.accounts.free(literal):
            return self.b.accounts.reserve(literal)
        return self.b.accounts.new(self.rng, "VN", self.rng.choice(("HN", "HCM")))

    def name_variant_conflict(self, first: _Partner, second: _Partner) -> None:
        """The same company under two spellings; the earlier registration wins the conflict."""
        start = self.scenario_start(0.25, 0.35, first, second)
        if start is None:
            return
        customer = self.vn_account(
            {"name": "Công ty TNHH Minh Phát", "domain": "minhphat.vn", "tax_id": "0101234567", "country": "VN"}
        )
        variant = {"name": _name_variant(customer, "Co., Ltd"), "domain": "gmail.com", "tax_id": None, "country": "VN"}
        self.b.accounts.reserve(variant)
        value = self.deal_value("VND", "large")
        a = self.submit(first, start, customer, value, ("software", "services"))
        self.approve(a, self.after(start, 1, 2))
        later = self.submit(second, self.after(start, 10, 14), variant, value, ("software",))
        resolved = self.after(later.submitted_at, 2, 3)
        cid = _ConflictRef(PARTNER_VS_PARTNER, a.ref, later.ref)
        self.b.cmd(
            resolved,
            "resolve_conflict",
            conflict_id=cid,
            kind=PARTNER_VS_PARTNER,
            registration_id=later.ref,
            other_registration_id=a.ref,
            winner=a.ref,
            actor=self.b.admin(),
            reason="First to register: the account is protected by the earlier approved registration",
            at=resolved,
        )
        self.reject(
            later,
            self.after(resolved, 1, 2),
            "duplicate",
            "Same account as an approved registration of another partner",
        )
        self.win(a, self.after(resolved, 20, 40))

    def domain_conflict(self, first: _Partner, second: _Partner) -> None:
        """Two partners register one account (same web domain); the later one withdraws."""
        start = self.scenario_start(0.3, 0.4, first, second)
        if start is None:
            return
        customer = self.vn_account(
            {
                "name": "Công ty Cổ phần Logistics Sao Mai",
                "domain": "saomailogistics.vn",
                "tax_id": "0312345678",
                "country": "VN",
            }
        )
        trading = "Sao Mai Express" if customer["domain"] == "saomailogistics.vn" else None
        variant = {
            "name": trading or f"{_ascii(_core(customer['name']))} Group",
            "domain": f"https://www.{customer['domain']}/lien-he",
            "tax_id": None,
            "country": "VN",
        }
        self.b.accounts.reserve(variant)
        a = self.submit(first, start, customer, self.deal_value("VND", "medium"), ("hardware", "services"))
        self.approve(a, self.after(start, 1, 2))
        later = self.submit(second, self.after(start, 15, 20), variant, self.deal_value("VND", "medium"), ("hardware",))
        self.withdraw(
            later, self.after(later.submitted_at, 3, 5), "Customer confirmed it already works with another partner"
        )
        # The earlier registration is left to expire at the end of its protection.

    def tax_id_conflict(self, first: _Partner, second: _Partner) -> None:
        """A branch (13-digit tax code) registered while its parent's registration is pending."""
        start = self.scenario_start(0.35, 0.45, first, second)
        if start is None:
            return
        literal: dict[str, Any] | None = {
            "name": "Công ty Cổ phần Thép Việt Á",
            "domain": "thepvieta.com.vn",
            "tax_id": "0309876543",
            "country": "VN",
        }
        while True:
            customer = self.vn_account(literal)
            branch = {
                "name": f"Chi nhánh Đà Nẵng - {_core(customer['name'])}",
                "domain": None,
                "tax_id": f"{customer['tax_id']}-002",
                "country": "VN",
            }
            if self.b.accounts.free_name(branch):
                self.b.accounts.reserve(branch)
                break
            literal = None
        a = self.submit(first, start, customer, self.deal_value("VND", "large"), ("hardware", "software"))
        later = self.submit(second, self.after(start, 1, 1), branch, self.deal_value("VND", "medium"), ("hardware",))
        self.approve(a, self.after(later.submitted_at, 1, 2))
        assert a.approved_at is not None
        won = self.after(a.approved_at, 15, 30)
        self.win(a, won)
        self.reject(
            later,
            self.after(won, 1, 3),
            "existing_customer",
            "Branch of an account already won by another partner (same parent tax code)",
        )

    def sale_outside_registration(self, owner: _Partner, intruder: _Partner) -> None:
        """Partner X reports a sale on an account protected by partner Y's registration."""
        start = self.scenario_start(0.4, 0.5, owner, intruder)
        if start is None:
            return
        customer = self.vn_account(None)
        a = self.submit(owner, start, customer, self.deal_value("VND", "medium"), ("software",))
        self.approve(a, self.after(start, 1, 2))
        assert a.approved_at is not None
        variant = {
            "name": _name_variant(customer, "JSC"),
            "domain": customer["domain"],
            "tax_id": None,
            "country": "VN",
        }
        sold = self.after(a.approved_at, 15, 20, intruder.region)
        sale = self.sale(intruder, sold, variant, self.deal_value("VND", "small"), ("software",))
        resolved = self.after(sold, 3, 5)
        cid = _ConflictRef(SALE_OUTSIDE_REGISTRATION, a.ref, sale.ref)
        self.b.cmd(
            resolved,
            "resolve_conflict",
            conflict_id=cid,
            kind=SALE_OUTSIDE_REGISTRATION,
            registration_id=a.ref,
            winner=a.ref,
            actor=self.b.admin(),
            reason="Deal sourced under the protected registration; the other partner's commission is under review",
            at=resolved,
        )
        self.win(a, self.after(resolved, 10, 30, owner.region))

    def direct_on_protected(self, partner: _Partner) -> None:
        """Our own sales team opens an opportunity on a partner-protected account; dismissed."""
        start = self.scenario_start(0.45, 0.55, partner)
        if start is None:
            return
        customer = self.vn_account(
            {
                "name": "Công ty Cổ phần Dược phẩm Bình Minh",
                "domain": "binhminhpharma.vn",
                "tax_id": "0108765432",
                "country": "VN",
            }
        )
        a = self.submit(partner, start, customer, self.deal_value("VND", "large"), ("software", "services"))
        self.approve(a, self.after(start, 1, 3))
        assert a.approved_at is not None
        variant = {
            "name": _name_variant(customer, "Joint Stock Company"),
            "domain": f"www.{customer['domain']}",
            "tax_id": customer["tax_id"],
            "country": "VN",
        }
        opened = self.after(a.approved_at, 10, 15)
        opportunity = self.opportunity(opened, variant, self.deal_value("VND", "medium"))
        dismissed = self.after(opened, 2, 3)
        cid = _ConflictRef(DIRECT_VS_PARTNER, a.ref, opportunity)
        self.b.cmd(
            dismissed,
            "dismiss_conflict",
            conflict_id=cid,
            kind=DIRECT_VS_PARTNER,
            registration_id=a.ref,
            actor=self.b.admin(),
            reason="The CRM opportunity is the customer's support renewal, handled by customer success",
            at=dismissed,
        )
        self.win(a, self.after(dismissed, 20, 40, partner.region))
