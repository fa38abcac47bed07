"""The picture store in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, ...).

The same keys as the local store (``storage.files.key_for``: ``<kind>/<sha[:2]>/<sha>.<ext>``),
so a folder copied into a bucket is a valid store and keys map one to one.

- Writes are write-once: ``PutObject`` with ``If-None-Match: *``. A 412 answer means the
  object is already there (content-addressed: the same bytes), which is success. A PUT is
  atomic on every S3 server: an object exists whole or not at all, so nothing is ever
  half-written, even when the connection drops mid-upload.
- Reads are capped (``max_bytes``): a server that claims or sends more than any picture we
  write cannot make us read gigabytes; and the bytes are checked against their name (the
  SHA-256), so a server that answers garbage is caught here rather than in a chat.
- Every failure to reach the store (refused connections, timeouts, 5xx after botocore's
  retries, credentials refused, a missing bucket) is ``StorageUnavailable``; a missing
  object is ``FileNotFoundError``, as in the local store.

Synchronous, like ``FileStore``: async callers use ``asyncio.to_thread`` (a boto3 client is
thread-safe).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Collection
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from storage.files import (
    _SHA256,
    KINDS,
    StorageError,
    StorageUnavailable,
    StoredFile,
    key_for,
)

__all__ = ["DEFAULT_MAX_BYTES", "S3Store"]

log = logging.getLogger(__name__)

# Far above any picture sdhost writes (a 4096x4096 PNG is some tens of MB).
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
_DURABLE_KINDS = ("images", "inputs")  # thumbnails can be made again; see ``_touch``


class S3Store:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        public_base_url: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_attempts: int = 3,
        max_bytes: int = DEFAULT_MAX_BYTES,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.public_base_url = (public_base_url or "").rstrip("/") or None
        self.max_bytes = max_bytes
        if client is None:
            config = BotoConfig(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                # total_max_attempts counts the first try ("max_attempts" would not)
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                # path-style (http://host/bucket/key): what self-hosted servers expect
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                # checksums only where S3 requires them: the newer defaults (CRC32 trailers)
                # are not understood by every S3-compatible server
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=32,
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                # empty: botocore's own chain (environment, instance role, ~/.aws)
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                region_name=region or "us-east-1",
                config=config,
            )
        self.client = client

    # --- the PictureStore interface ----------------------------------------------------

    def put(self, data: bytes, *, kind: str = "images", ext: str = "png") -> StoredFile:
        sha = hashlib.sha256(data).hexdigest()
        self._put_once(key_for(sha, kind=kind, ext=ext), data, touch=kind in _DURABLE_KINDS)
        return StoredFile(sha256=sha, path=None, size=len(data))

    def put_thumbnail(self, sha256: str, data: bytes) -> str:
        """Under the hash of the image it previews, like the local store."""
        key = key_for(sha256, kind="thumbs", ext="webp")
        self._put_once(key, data, touch=False)
        return key

    def get(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bytes:
        key = key_for(sha256, kind=kind, ext=ext)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(f"{self._where(key)} is not in the store") from None
            raise _unavailable("reading", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("reading", key, exc) from exc
        body = answer["Body"]
        try:
            declared = int(answer.get("ContentLength") or 0)
            if declared > self.max_bytes:
                raise StorageError(
                    f"the store says {self._where(key)} is {declared} bytes, more than any "
                    f"picture ({self.max_bytes}); not read"
                )
            try:
                data = body.read(self.max_bytes + 1)
            except BotoCoreError as exc:
                raise _unavailable("reading", key, exc) from exc
        finally:
            with contextlib.suppress(Exception):
                body.close()
        if len(data) > self.max_bytes:
            raise StorageError(f"the store sent more than {self.max_bytes} bytes for {key}")
        if kind != "thumbs" and hashlib.sha256(data).hexdigest() != sha256:
            # thumbnails are named after their image, not their own bytes
            raise StorageError(f"the store sent bytes for {key} that are not that file")
        return bytes(data)

    def exists(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bool:
        key = key_for(sha256, kind=kind, ext=ext)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise _unavailable("checking", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("checking", key, exc) from exc
        return True

    def locate(self, sha256: str, *, kind: str = "images", ext: str = "png") -> str:
        key = key_for(sha256, kind=kind, ext=ext)
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        return f"s3://{self.bucket}/{key}"

    def public_url(self, sha256: str, *, kind: str = "images", ext: str = "png") -> str | None:
        """The file behind ``public_base_url`` (a CDN in front of the bucket), if set."""
        if not self.public_base_url:
            return None
        return f"{self.public_base_url}/{key_for(sha256, kind=kind, ext=ext)}"

    def describe(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def sweep(self, referenced: Collection[str], *, keep_since: float) -> list[str]:
        """Delete objects no row refers to, last written before ``keep_since``; return their
        keys. The rules are the local sweep's: a thumbnail stays while its picture does;
        keys that are not ours are left alone."""
        wanted = set(referenced)
        kept_images: set[str] = set()
        doomed: list[str] = []
        for kind in ("images", "inputs", "thumbs"):
            for key, modified in self._list(f"{kind}/"):
                name = key.rsplit("/", 1)[-1]
                sha = name.split(".", 1)[0]
                if not _SHA256.fullmatch(sha) or key.split("/", 1)[0] not in KINDS:
                    continue  # not ours
                # S3 times are whole seconds (truncated): a second of doubt counts as new
                if modified + 1.0 >= keep_since or sha in wanted:
                    if kind == "images":
                        kept_images.add(sha)
                    continue
                if kind == "thumbs" and sha in kept_images:
                    continue
                doomed.append(key)
        removed: list[str] = []
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes 1000 keys at most
            batch = doomed[start : start + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise _unavailable("sweeping", self.bucket, exc) from exc
            failed = {e.get("Key") for e in answer.get("Errors", [])}
            for error in answer.get("Errors", []):
                log.warning("could not delete %s from the store: %s", error.get("Key"), error)
            removed.extend(k for k in batch if k not in failed)
        return removed

    # --- internals ---------------------------------------------------------------------

    def _put_once(self, key: str, data: bytes, *, touch: bool) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ContentType=_content_type(key),
            )
        except ClientError as exc:
            if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                # already there: the same name is the same bytes
                if touch:
                    self._touch(key)
                return
            raise _unavailable("writing", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("writing", key, exc) from exc

    def _touch(self, key: str) -> None:
        """Make an object found already there new in the sweep's eyes (the local store sets
        the file's time), so an old unreferenced input stored again for a new job is not
        swept between its store and its job's row: a copy onto itself, same bytes. Best
        effort: the sweep's grace period covers the common case anyway."""
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                ContentType=_content_type(key),
            )
        except (ClientError, BotoCoreError) as exc:
            log.debug("could not refresh %s in the store: %s", key, exc)

    def _list(self, prefix: str) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []) or []:
                    out.append((str(item["Key"]), item["LastModified"].timestamp()))
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("listing", prefix, exc) from exc
        return out

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unavailable(doing: str, what: str, exc: Exception) -> StorageUnavailable:
    """One clear line: what we were doing and what the store said (never the credentials:
    botocore's messages do not carry them)."""
    if isinstance(exc, ClientError):
        said = f"{_status(exc) or '?'} {_code(exc)}".strip()
    else:
        said = f"{type(exc).__name__}: {exc}"
    return StorageUnavailable(f"the picture store failed while {doing} {what}: {said}")


def _content_type(key: str) -> str:
    return {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}.get(
        key.rsplit(".", 1)[-1], "application/octet-stream"
    )
