"""Pictures in and out of Discord: attachments that are pictures, uploads that fit."""

from __future__ import annotations

import io

import discord
from PIL import Image


def fit_upload(data: bytes, limit: int) -> tuple[bytes, str] | None:
    """The picture as PNG if it fits, else as a JPEG small enough, else None."""
    if len(data) <= limit:
        return data, "png"
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB")
    for quality in (92, 85, 75):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= limit:
            return buf.getvalue(), "jpg"
    while min(img.size) > 64:
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85, optimize=True)
        if buf.tell() <= limit:
            return buf.getvalue(), "jpg"
    return None


def _is_picture(attachment: discord.Attachment) -> bool:
    kind = attachment.content_type or ""
    name = attachment.filename.lower()
    return kind.startswith("image/") or name.endswith((".png", ".jpg", ".jpeg", ".webp"))
