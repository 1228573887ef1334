"""What the HTTP API needs, built by the composition root (``api.bootstrap.build_api_services``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from api.http.keys import KeyStore
from api.progress import ProjectionProgress
from api.projector import PartnerHistory
from domain.application import CommandResult, PartnerProgram
from projections.metrics import Gauges
from projections.port import ProjectionStore

__all__ = ["ApiServices", "ReadinessCheck"]

ReadinessCheck = Callable[[], str]
"""Returns a short description when ready; raises (any exception) when not."""


@dataclass
class ApiServices:
    """Everything the routes use; nothing here reads the environment.

    ``after_command`` runs after every successful command (the embedded mode
    catches the local projector up there, so the command's position is already
    reached when the response is sent). ``wait_default``/``wait_max`` bound how
    long a read waits for ``?min_position=``.
    """

    program: PartnerProgram
    store: ProjectionStore
    progress: ProjectionProgress
    keys: KeyStore
    history: PartnerHistory
    gauges: Gauges
    mode: str = "embedded"
    after_command: Callable[[CommandResult], None] | None = None
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    max_ready_lag: int = 10_000
    wait_default: float = 5.0
    wait_max: float = 30.0
    closers: list[Callable[[], None]] = field(default_factory=list)
    payout_lock: threading.Lock = field(default_factory=threading.Lock)
    """Serialises payouts in this process: each pays the balance left by the previous one."""

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
