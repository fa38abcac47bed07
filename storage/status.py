"""The statuses stored in the database, named once for the core and the adapters.

Each is a ``StrEnum``: a member is the very string kept in the ``status`` column and
compares (and hashes) equal to it, so rows read back as plain strings still match, and
SQL built with a member binds its string.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """``jobs.status``: queued -> running -> one of the terminal four (or back to queued
    when a lease lapses or a run is retried)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    QUARANTINED = "quarantined"


JOB_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
JOB_TERMINAL = (
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.QUARANTINED,
)


class OutboxStatus(StrEnum):
    """``outbox.status``: pending -> sending (claimed by one process) -> sent, or back to
    pending for a retry, or dead when it can never be delivered."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


OUTBOX_UNSENT = (OutboxStatus.PENDING, OutboxStatus.SENDING)


class DownloadStatus(StrEnum):
    """``download_tasks.status`` of a Civitai model download."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


DOWNLOAD_ACTIVE = (DownloadStatus.QUEUED, DownloadStatus.RUNNING, DownloadStatus.PAUSED)
DOWNLOAD_TERMINAL = (DownloadStatus.DONE, DownloadStatus.FAILED, DownloadStatus.CANCELLED)
# A download whose status message is still being edited (it moves by itself).
DOWNLOAD_UNDER_WAY = (DownloadStatus.QUEUED, DownloadStatus.RUNNING)
