"""The schema. Alembic owns it (storage/migrations); this module is its source of truth.

Times are stored as float epoch seconds: they compare the same way on SQLite and
PostgreSQL, and the claim query does arithmetic on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.status import OutboxStatus

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}

    if TYPE_CHECKING:
        # Every class here maps one Table (SQLAlchemy types it as any FromClause), so
        # ``Model.__table__`` can be inserted into, updated and asked for its name.
        __table__: ClassVar[Table]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id", name="uq_users_identity"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Personal defaults from /settings ({"model": ..., "aspect": ..., "negative": ...});
    # NULL (not JSON null) when the person has none.
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # When a job of theirs last started: the scheduler serves whoever waited longest first.
    last_served_at: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)


class LedgerEntry(Base):
    """Append-only. balance == sum(delta) per user is an invariant the tests check.

    (job_id, reason) is unique so a job is charged once and refunded once, whatever
    retries or restarts happen; ``key`` does the same for entries without a job (grants).
    """

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("job_id", "reason", name="uq_ledger_job_reason"),
        Index("ix_ledger_user", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    delta: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    key: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    note: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "provider", "user_id", "id"),
        Index("ix_jobs_user", "user_id", "status"),
        Index("ix_jobs_batch", "batch_id"),
        Index("ix_jobs_lease", "status", "lease_owner"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    batch_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    batch_index: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16))  # txt2img | img2img | batch
    # queued | running | succeeded | failed | cancelled | quarantined
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cost: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str] = mapped_column(String(32), default="received")
    provider_task_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    provider_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Runs cut short by their process dying with no sign that the job caused it (a kill,
    # a restart, the machine going down): not attempts, so bad luck never quarantines.
    lost_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What the provider says the job cost it, in its own unit (BFL credits, Horde kudos):
    # the operator's spend, shown in /stats. NULL where the provider does not say.
    provider_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    provider_cost_unit: Mapped[str | None] = mapped_column(String(16), nullable=True)
    failure: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    reply_to: Mapped[dict[str, Any]] = mapped_column(JSON)
    idem_key: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    retry_of: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_after: Mapped[float] = mapped_column(Float, default=0.0)
    deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    submitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StoredImage(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "idx", name="uq_images_job_idx"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    idx: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class OutboxEvent(Base):
    """What a chat adapter still has to tell someone. Claimed like jobs, marked sent after."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "idx", name="uq_outbox_job_kind_idx"),
        Index("ix_outbox_pending", "status", "platform", "next_try", "id"),
        # a console claims only its person's rows: without this, every poll scans the
        # rows other people's consoles have still to print
        Index("ix_outbox_audience", "status", "platform", "audience", "next_try", "id"),
        Index("ix_outbox_job", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    platform: Mapped[str] = mapped_column(String(32))
    # Who may deliver it, for platforms whose delivery is bound to one process (a console
    # serves the people at its own terminal): the reply target's chat; NULL: any process.
    audience: Mapped[str | None] = mapped_column(String(160), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | finished | failed | cancelled
    idx: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    next_try: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DownloadTask(Base):
    """A model file downloaded from Civitai (seed 002's DownloadTask).

    ``status``: queued | running | paused | done | failed | cancelled. The file streams to
    ``path + ".part"`` and is renamed to ``path`` once checked. A running task belongs to
    ``owner`` (one process) and its ``updated_at`` moves with every progress write, so a task
    whose process died can be taken over.
    """

    __tablename__ = "download_tasks"
    __table_args__ = (
        Index("ix_download_tasks_status", "status", "id"),
        Index("ix_download_tasks_version", "version_id", "file_id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    file_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # checkpoint | lora | vae | embedding | controlnet | upscaler | other
    model_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    file_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # what was asked for: {"type": "Model", "format": "SafeTensor", "fp": "fp16", ...}
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    speed: Mapped[float | None] = mapped_column(Float, nullable=True)  # bytes per second
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    expected_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelRecord(Base):
    """The model registry: one row per model file content (its SHA256)."""

    __tablename__ = "models"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  # lower-case hex
    name: Mapped[str] = mapped_column(String(256))
    # checkpoint | lora | vae | embedding | controlnet | upscaler | other
    type: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))  # civitai | local
    source_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    civitai_model_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    civitai_version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    version_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    cover_image_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # ready | missing
    # When Civitai was last asked about this hash (a scan asks once, unless told to refresh).
    enriched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ModelFileRecord(Base):
    """The hash cache of ``sdhost models scan``: a file is hashed again only when its size
    or modification time changed."""

    __tablename__ = "model_files"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    hashed_at: Mapped[float] = mapped_column(Float)


class IncomingUpdate(Base):
    """An update a chat platform pushed to one of the processes (a webhook), kept until one
    process has handled it: stored once per ``(source, update_id)``, claimed with a lease,
    handled in order per chat, forgotten by age (platforms may reuse ids later)."""

    __tablename__ = "incoming_updates"
    __table_args__ = (
        UniqueConstraint("source", "update_id", name="uq_incoming_updates_id"),
        Index("ix_incoming_updates_open", "source", "done_at", "update_id"),
        Index("ix_incoming_updates_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))  # the bot the updates are for
    update_id: Mapped[int] = mapped_column(BigInteger)
    chat: Mapped[str] = mapped_column(String(64))  # updates of one chat run in order
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[float] = mapped_column(Float, default=0.0)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)
