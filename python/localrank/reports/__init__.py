"""What leaves the device: the wire contract, the randomised reports, the privacy accountant
and the outbox."""

from localrank.reports.accountant import Accountant, LedgerEntry
from localrank.reports.outbox import Outbox, OutboxBatch, SentReport
from localrank.reports.reporter import Reporter, ReportingStatus
from localrank.reports.wire import validate_batch, validate_report

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
