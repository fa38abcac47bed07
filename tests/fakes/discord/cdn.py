"""The attachment CDN: uploads kept, signed links that expire."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from aiohttp import web

from tests.fakes.discord.base import (
    ATTACHMENT_FLAG_SPOILER,
    CDN_GONE,
    CdnFetch,
    Json,
    _Attachment,
    _guess_type,
)


# The mixins share FakeDiscord's state (set up in server.py).
class CdnMixin:
    """The attachment CDN: uploads kept, signed links that expire."""

    # ---------------------------------------------------------- attachments / CDN

    def _new_attachment(
        self,
        filename: str,
        data: bytes,
        prefix: str,
        *,
        description: str | None = None,
        spoiler: bool = False,
        ephemeral: bool = False,
    ) -> _Attachment:
        content_type, width, height = _guess_type(filename, data)
        att_id = self._ids.next()
        att = _Attachment(
            id=att_id,
            filename=filename,
            stored=self.files.put(
                data, key=str(att_id), content_type=content_type, filename=filename
            ),
            content_type=content_type,
            width=width,
            height=height,
            prefix=prefix,
            description=description,
            spoiler=spoiler or filename.startswith("SPOILER_"),
            ephemeral=ephemeral,
        )
        self._attachments[att.id] = att
        return att

    def _sign(self, path: str) -> str:
        issued = int(time.time())
        expires = issued + int(self.attachment_url_ttl)
        ex, is_ = f"{expires:x}", f"{issued:x}"
        mac = hmac.new(self._cdn_key, f"{path}|{ex}|{is_}".encode(), hashlib.sha256).hexdigest()
        return f"ex={ex}&is={is_}&hm={mac}&"

    def _attachment_json(self, att: _Attachment) -> Json:
        path = f"{att.prefix}/{att.id}/{att.filename}"
        query = self._sign(path)
        out: Json = {
            "id": str(att.id),
            "filename": att.filename,
            "size": len(att.data),
            "url": f"{self.cdn_url}/cdn/{path}?{query}",
            "proxy_url": f"{self.cdn_url}/media/{path}?{query}",
            "content_type": att.content_type,
            "flags": ATTACHMENT_FLAG_SPOILER if att.spoiler else 0,
        }
        if att.width is not None:
            out["width"] = att.width
            out["height"] = att.height
            out["placeholder_version"] = 1
        if att.description is not None:
            out["description"] = att.description
        if att.ephemeral:
            out["ephemeral"] = True
        return out

    def expire_attachments(self) -> None:
        """Invalidate every CDN link handed out so far (rotates the signing key).

        Fetching the message again (REST or a new dispatch) yields fresh, valid links, which is
        how a bot must recover (reference.mdx "Signed Attachment CDN URLs").
        """
        self._cdn_key = secrets.token_bytes(16)

    @property
    def cdn_fetches(self) -> list[CdnFetch]:
        """Every GET on the CDN origin (answered), in order."""
        return [
            CdnFetch(c.path.split("/", 2)[2], c.status, c.time)
            for c in self.log.calls_of(origin="cdn")
            if c.done
        ]

    def attachment_bytes(self, attachment_id: int) -> bytes:
        return self._attachments[int(attachment_id)].data

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        status = 404
        body: bytes = CDN_GONE.encode()
        content_type = "text/plain"
        match = re.fullmatch(r"(?:ephemeral-)?attachments/\d+/(\d+)/([^/]+)", path)
        att = self._attachments.get(int(match.group(1))) if match else None
        q = request.query
        if att is not None and match is not None and match.group(2) == att.filename:
            ex, is_, hm = q.get("ex", ""), q.get("is", ""), q.get("hm", "")
            expected = hmac.new(
                self._cdn_key, f"{path}|{ex}|{is_}".encode(), hashlib.sha256
            ).hexdigest()
            try:
                fresh = int(ex, 16) > time.time()
            except ValueError:
                fresh = False
            if fresh and hmac.compare_digest(expected, hm):
                status, body, content_type = 200, att.data, att.content_type
        self._notify()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})
