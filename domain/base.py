"""Shared shape of the product's aggregates and events."""

from __future__ import annotations

import re
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import ReasonRequired, ValidationFailed
from domain.ids import aggregate_id, event_id

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    """``TierChanged`` -> ``tier_changed``."""
    return _CAMEL.sub("_", name).lower()


class PrmAggregate(Aggregate):
    """Base of every aggregate of the product.

    ``KIND`` names the aggregate on the wire (``prm.<kind>.<event>.v1``) and in
    its deterministic id. ``partner_id`` is the partner the aggregate concerns
    (``None`` for programme-wide aggregates and direct sales).
    """

    KIND: ClassVar[str] = ""
    partner_id: str | None

    class Event(Aggregate.Event):
        """Every event names its aggregate's business id and the partner it concerns (or ``None``)."""

        subject: str
        partner_id: str | None

    @classmethod
    def id_for(cls, business_id: str) -> UUID:
        return aggregate_id(cls.KIND, business_id)

    @property
    def business_id(self) -> str:
        """``P-0042``, ``R-0007``…: the value of the ``<kind>_id`` attribute."""
        return str(getattr(self, f"{self.KIND}_id"))

    @classmethod
    def _create(cls, event_class: type[Any], *, id: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("subject", kwargs.get(f"{cls.KIND}_id"))
        return super()._create(event_class, id=id, **kwargs)

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        kwargs.setdefault("subject", self.business_id)
        super().trigger_event(event_class, **kwargs)


def wire_type(event: Any) -> str:
    """CloudEvents ``type`` of a domain event: ``prm.<aggregate>.<event>.v1``."""
    return wire_type_of(type(event))


def wire_type_of(event_class: type[Any]) -> str:
    """CloudEvents ``type`` of a domain event class (remembered per class: it runs a regular expression)."""
    try:
        return _WIRE_TYPES[event_class]
    except KeyError:
        pass
    qualname = event_class.__qualname__
    prefix = qualname.rsplit(".", 1)[0]
    event_name = qualname.rsplit(".", 1)[-1]
    kind = _KIND_BY_QUALNAME_PREFIX.get(prefix)
    name = f"prm.{kind or 'unknown'}.{snake(event_name)}.v1"
    if kind is not None:  # an aggregate registered later would change an "unknown" answer
        _WIRE_TYPES[event_class] = name
    return name


_KIND_BY_QUALNAME_PREFIX: dict[str, str] = {}
_WIRE_TYPES: dict[type[Any], str] = {}


def register_kind(cls: type[PrmAggregate]) -> type[PrmAggregate]:
    """Class decorator: make ``wire_type`` know the aggregate's kind."""
    if not cls.KIND:
        raise TypeError(f"{cls.__name__} must set KIND")
    _KIND_BY_QUALNAME_PREFIX[cls.__qualname__] = cls.KIND
    return cls


def stable_event_id(event: Any) -> UUID:
    return event_id(event.originator_id, event.originator_version)


def require_actor(actor: str) -> str:
    if not actor or not actor.strip():
        raise ValidationFailed("actor is required: every step names who did it")
    return actor.strip()


def require_reason(reason: str | None, action: str) -> str:
    if reason is None or not reason.strip():
        raise ReasonRequired(f"a reason is required to {action}")
    return reason.strip()


def require_text(value: str | None, field: str) -> str:
    if value is None or not str(value).strip():
        raise ValidationFailed(f"{field} is required", field=field)
    return str(value).strip()
