"""The stored statuses of jobs, deliveries and downloads, for the adapters.

They are defined in ``storage.status`` (storage may not import the core); adapters import
them from here, as they import everything else of the core.
"""

from storage.status import (
    DOWNLOAD_ACTIVE,
    DOWNLOAD_TERMINAL,
    DOWNLOAD_UNDER_WAY,
    JOB_ACTIVE,
    JOB_TERMINAL,
    OUTBOX_UNSENT,
    DownloadStatus,
    JobStatus,
    OutboxStatus,
)

__all__ = [
    "DOWNLOAD_ACTIVE",
    "DOWNLOAD_TERMINAL",
    "DOWNLOAD_UNDER_WAY",
    "JOB_ACTIVE",
    "JOB_TERMINAL",
    "OUTBOX_UNSENT",
    "DownloadStatus",
    "JobStatus",
    "OutboxStatus",
]
