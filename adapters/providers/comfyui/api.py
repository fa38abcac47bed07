"""HTTP and the websocket to one ComfyUI server (notes: shared/api/providers.md,
"Self-hosted: ComfyUI"; the server's own ``server.py``).

- ComfyUI has no authentication; people put a proxy in front. The instance's configured
  headers (and Basic credentials) go with every HTTP request *and* the websocket upgrade.
- ``POST /prompt`` answers 400 for a graph it will not queue: ``error`` says why (for an
  unknown node type or a graph without outputs ``node_errors`` is ``{}``), ``node_errors``
  names the nodes. ``PromptRejected`` carries both, for the operator's log.
- A connection refused, reset or timed out: ``InstanceDown`` (the pool takes it out).
- Answers are read with a size cap (a picture from ``/view`` included).
- Binary websocket frames: a 4-byte big-endian type; type 1 is a preview (4-byte format,
  then the image; no prompt id), type 4 a preview with metadata (4-byte length, that much
  JSON with ``prompt_id``, then the image). ``preview_of`` reads both.
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import aiohttp
import httpx

from adapters import http
from adapters.providers.gpupool import InstanceDown
from bot.config import GpuInstanceConfig
from bot.errors import FailureClass, ProviderFailure

MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_PICTURE_BYTES = 96 * 1024 * 1024
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


class PromptRejected(Exception):
    """The server would not queue the graph (400): ``error`` and ``node_errors``."""

    def __init__(self, error: Any, node_errors: Any) -> None:
        super().__init__(str(error))
        self.error = error if isinstance(error, dict) else {"message": str(error or "")}
        self.node_errors = node_errors if isinstance(node_errors, dict) else {}

    def for_the_log(self) -> str:
        parts = [str(self.error.get("message") or self.error.get("type") or "rejected")]
        for node, info in self.node_errors.items():
            if not isinstance(info, dict):
                continue
            errors = info.get("errors") or []
            said = "; ".join(
                f"{e.get('message', '')}: {e.get('details', '')}".strip(": ")
                for e in errors
                if isinstance(e, dict)
            )
            parts.append(f"node {node} ({info.get('class_type', '?')}): {said}")
        return " | ".join(parts)

    def plainly(self) -> str:
        """One line for the person: what was wrong, without the graph's insides."""
        for info in self.node_errors.values():
            for e in (info or {}).get("errors") or []:
                if isinstance(e, dict) and e.get("type") == "value_not_in_list":
                    return f"the GPU does not have {e.get('details', 'a value asked for')}"
        return "the GPU's ComfyUI refused the workflow (the operator's log says why)"


def preview_of(frame: bytes) -> tuple[bytes, str | None] | None:
    """(image bytes, prompt id or None) of a binary preview frame; None for anything else."""
    if len(frame) < 8:
        return None
    kind = struct.unpack(">I", frame[:4])[0]
    if kind == PREVIEW_IMAGE:
        return frame[8:], None
    if kind == PREVIEW_IMAGE_WITH_METADATA:
        size = struct.unpack(">I", frame[4:8])[0]
        try:
            meta = json.loads(frame[8 : 8 + size])
        except ValueError:
            return None
        pid = meta.get("prompt_id") if isinstance(meta, dict) else None
        return frame[8 + size :], str(pid) if pid else None
    return None


class ComfyApi:
    """The API of one ComfyUI server."""

    def __init__(self, cfg: GpuInstanceConfig, *, timeout_s: float) -> None:
        self.name = cfg.name
        self.url = cfg.url.rstrip("/")
        self.headers = dict(cfg.headers)
        self._basic = (cfg.user, cfg.password) if cfg.user or cfg.password else None
        auth = httpx.BasicAuth(*self._basic) if self._basic else None
        self.client = http.http_client(
            timeout_s, connections=8, keepalive=4, auth=auth, headers=self.headers
        )
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP ------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        route: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        files: Any = None,
        data: Any = None,
        raw: bool = False,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> Any:
        url = f"{self.url}/{route.lstrip('/')}"
        try:
            async with self.client.stream(
                method, url, json=json_body, params=params, files=files, data=data
            ) as response:
                try:
                    body = await http.read_capped(response, max_bytes)
                except http.TooLarge:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR,
                        f"ComfyUI instance {self.name} sent more than {max_bytes // 2**20} MB",
                    ) from None
                status = response.status_code
        except httpx.HTTPError as exc:
            raise InstanceDown(type(exc).__name__) from exc
        if status in (401, 403):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"ComfyUI instance {self.name} refused sdhost (HTTP {status}: check its headers "
                "or credentials)",
            )
        if raw and status == 200:
            return body
        try:
            answer: Any = json.loads(body) if body else None
        except ValueError:
            answer = None
        if status == 400 and route.strip("/") in ("prompt", "api/prompt") and answer:
            raise PromptRejected(answer.get("error"), answer.get("node_errors"))
        if status >= 400:
            words = ""
            if isinstance(answer, dict):
                err = answer.get("error")
                words = str(err.get("message") if isinstance(err, dict) else err or "")[:200]
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"ComfyUI instance {self.name} failed {route} (HTTP {status}"
                f"{': ' + words if words else ''})",
            )
        return answer

    async def object_info(self) -> dict[str, Any]:
        info = await self.call("GET", "object_info")
        if not isinstance(info, dict):
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "object_info is not an object")
        return info

    async def submit(
        self, graph: dict[str, Any], client_id: str, extra_data: dict[str, Any]
    ) -> str:
        answer = await self.call(
            "POST",
            "prompt",
            json_body={"prompt": graph, "client_id": client_id, "extra_data": extra_data},
        )
        pid = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not pid:
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "ComfyUI gave no prompt_id")
        return str(pid)

    async def upload(self, data: bytes, name: str) -> str:
        """Upload an input picture; the name to use (the server may rename on a clash)."""
        answer = await self.call(
            "POST",
            "upload/image",
            files={"image": (name, data, "image/png")},
            data={"overwrite": "false", "type": "input"},
        )
        if not isinstance(answer, dict) or not answer.get("name"):
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "ComfyUI upload gave no name")
        sub = str(answer.get("subfolder") or "")
        return f"{sub}/{answer['name']}" if sub else str(answer["name"])

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        answer = await self.call("GET", f"history/{prompt_id}")
        entry = answer.get(prompt_id) if isinstance(answer, dict) else None
        return entry if isinstance(entry, dict) else None

    async def view(self, image: dict[str, Any]) -> bytes:
        params = {
            "filename": str(image.get("filename", "")),
            "subfolder": str(image.get("subfolder", "")),
            "type": str(image.get("type", "output")),
        }
        data = await self.call("GET", "view", params=params, raw=True, max_bytes=MAX_PICTURE_BYTES)
        if not isinstance(data, bytes | bytearray) or not data:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, f"ComfyUI instance {self.name} served no picture"
            )
        return bytes(data)

    async def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        answer = await self.call("GET", "queue")

        def ids(items: Any) -> list[str]:
            return [str(i[1]) for i in items or [] if isinstance(i, list) and len(i) > 1]

        if not isinstance(answer, dict):
            return [], []
        return ids(answer.get("queue_running")), ids(answer.get("queue_pending"))

    async def delete_queued(self, prompt_id: str) -> None:
        await self.call("POST", "queue", json_body={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """Stop the running prompt. Newer builds take ``prompt_id`` and stop only that one;
        older ones stop whatever runs: callers check that it is ours first."""
        await self.call("POST", "interrupt", json_body={"prompt_id": prompt_id})

    # --- websocket ---------------------------------------------------------------------------

    async def connect(
        self, client_id: str | None = None
    ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        """A websocket for ``client_id`` (a new one if None), with the feature-flags
        handshake sent, so previews come with their prompt id."""
        if self._session is None or self._session.closed:
            auth = aiohttp.BasicAuth(*self._basic) if self._basic else None
            self._session = aiohttp.ClientSession(headers=self.headers, auth=auth)
        cid = client_id or uuid.uuid4().hex
        ws_url = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        try:
            ws = await self._session.ws_connect(
                f"{ws_url}/ws", params={"clientId": cid}, heartbeat=20, max_msg_size=32 * 2**20
            )
            await ws.send_json(
                {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"ComfyUI instance {self.name} refused the websocket (HTTP {exc.status}: "
                    "check its headers)",
                ) from None
            raise InstanceDown(f"websocket {exc.status}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise InstanceDown(type(exc).__name__) from exc
        return ws, cid
