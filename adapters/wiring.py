"""Which concrete adapters a config turns on: providers, chat platforms, command extensions.

The only module that names them all; the core (``bot.app``) asks it, so the core itself
never names a platform or a provider, and no adapter imports ``bot.app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.chat import ChatAdapter
from bot.config import Config
from bot.locks import NamedLocks
from bot.model_registry import ModelRegistry
from bot.providers import Provider

if TYPE_CHECKING:
    from bot.app import App


def build_providers(
    config: Config, *, registry: ModelRegistry | None = None, locks: NamedLocks | None = None
) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    if config.providers.demo.enabled:
        from adapters.providers.demo import DemoProvider

        providers["demo"] = DemoProvider(config.providers.demo)
    if config.providers.dashscope.active:
        from adapters.providers.dashscope import DashScopeProvider

        providers["dashscope"] = DashScopeProvider(config.providers.dashscope)
    if config.providers.liblib.active:
        from adapters.providers.liblib import LiblibProvider

        providers["liblib"] = LiblibProvider(config.providers.liblib)
    if config.providers.bfl.active:
        from adapters.providers.bfl import BflProvider

        providers["bfl"] = BflProvider(config.providers.bfl)
    if config.providers.horde.active:
        from adapters.providers.horde import HordeProvider

        providers["horde"] = HordeProvider(config.providers.horde)
    if config.providers.a1111.active:
        from adapters.providers.a1111 import A1111Provider

        providers["a1111"] = A1111Provider(config.providers.a1111, registry=registry, locks=locks)
    if config.providers.comfyui.active:
        from adapters.providers.comfyui import ComfyUIProvider

        providers["comfyui"] = ComfyUIProvider(config.providers.comfyui, locks=locks)
    return providers


def build_chat_adapters(app: App) -> list[ChatAdapter]:
    """The chat platforms the config turns on (the console is added by `sdhost chat`)."""
    adapters: list[ChatAdapter] = []
    if app.config.telegram.enabled:
        from adapters.chat.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(app))
    if app.config.discord.enabled:
        from adapters.chat.discord import DiscordAdapter

        adapters.append(DiscordAdapter(app))
    return adapters


def build_extensions(app: App) -> dict[str, object]:
    """Command extensions (``/civitai``) the config turns on."""
    extensions: dict[str, object] = {}
    if app.config.civitai.enabled:
        from adapters.civitai.commands import build as build_civitai

        extensions["civitai"] = build_civitai(app.config, app.jobs, db=app.db, notifier=app)
    return extensions
