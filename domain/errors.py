"""Domain errors: every refusal of a command is one of these, with a readable message."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused by a business rule.

    ``code`` is stable and machine-readable (used for HTTP problem types and
    dead-letter error codes); the message is for people.
    """

    code = "domain_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class NotFound(DomainError):
    code = "not_found"


class UnknownPartner(NotFound):
    code = "unknown_partner"


class AlreadyExists(DomainError):
    code = "already_exists"


class InvalidTransition(DomainError):
    code = "invalid_transition"


class ValidationFailed(DomainError):
    code = "validation_failed"


class ReasonRequired(ValidationFailed):
    code = "reason_required"


class CapacityExceeded(DomainError):
    code = "capacity_exceeded"


class PartnerCannotRegister(DomainError):
    code = "partner_cannot_register"


class ChannelConflictBlocks(DomainError):
    code = "channel_conflict"


class RefundExceedsSale(DomainError):
    code = "refund_exceeds_sale"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"


class DuplicateWithDifferentData(DomainError):
    code = "duplicate_with_different_data"


class OverlappingPlanVersion(DomainError):
    code = "overlapping_plan_version"
