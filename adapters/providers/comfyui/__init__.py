"""The ComfyUI provider: self-hosted ComfyUI instances driven through their HTTP/websocket
API with API-format workflow graphs (``workflows`` puts a request's values into a graph)."""

from adapters.providers.comfyui.provider import ComfyUIProvider

__all__ = ["ComfyUIProvider"]
