"""What a device prepares to send: the randomised reports, the privacy accountant that charges
them and the outbox that holds them until the sync client sends them. Their shape is the wire
contract (:mod:`localrank.wire`)."""

from localrank.device.reports.accountant import Accountant, LedgerEntry
from localrank.device.reports.outbox import Outbox, OutboxBatch, SentReport
from localrank.device.reports.reporter import Reporter, ReportingStatus
from localrank.wire.reports import validate_batch, validate_report

__all__ = [
    "Accountant",
    "LedgerEntry",
    "Outbox",
    "OutboxBatch",
    "Reporter",
    "ReportingStatus",
    "SentReport",
    "validate_batch",
    "validate_report",
]
