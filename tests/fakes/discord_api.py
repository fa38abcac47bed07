"""The Discord fake lives in tests/fakes/discord/ (split by concern); this name stays for
``python -m tests.fakes.discord_api`` and existing imports."""

from tests.fakes.discord import *  # noqa: F403
from tests.fakes.discord import __all__  # noqa: F401
from tests.fakes.discord.remote import main

if __name__ == "__main__":
    main()
