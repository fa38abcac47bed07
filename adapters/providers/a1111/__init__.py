"""AUTOMATIC1111 / Forge / SD.Next instances the operator runs, as one pooled provider."""

from adapters.providers.a1111.provider import A1111Provider

__all__ = ["A1111Provider"]
