"""The ``sdhost`` command: chat in a terminal, run the bot, and operate it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from bot import redact
from bot.app import App
from bot.chat import UserRef
from bot.config import Config, ConfigError, load_config
from bot.errors import UserError
from bot.status import JobStatus
from storage.db import Database

DEFAULT_CONFIG = "config.toml"


def _user(spec: str) -> UserRef:
    """``platform:id`` (``telegram:12345``), or a bare name for a console user."""
    platform, sep, ident = spec.partition(":")
    if not sep:
        return UserRef("console", spec, spec)
    if not platform or not ident:
        raise UserError(
            f"bad user {spec!r}: write platform:id, e.g. telegram:12345 or console:alice"
        )
    return UserRef(platform, ident)


def _load(args: argparse.Namespace) -> Config:
    from pathlib import Path

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    config = load_config(path)
    setup_logging(config, verbose=getattr(args, "verbose", False))
    return config


def setup_logging(config: Config, *, verbose: bool = False) -> None:
    """Standard error at the configured level (DEBUG with ``-v``), every record (whichever
    library made it, tracebacks included) with the config's secrets masked."""
    logging.basicConfig(
        level=getattr(logging, "DEBUG" if verbose else config.logging.level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)  # warnings pass the same filter
    redact.install(config.secrets())


async def _chat(args: argparse.Namespace) -> int:
    from adapters.chat.console import run_console

    config = _load(args)
    name = args.user or config.console.user or getpass.getuser() or "console"
    app = App(config, crash_reports=True)
    return await run_console(app, UserRef("console", name, name), interactive=sys.stdin.isatty())


async def _run(args: argparse.Namespace) -> int:
    config = _load(args)
    app = App(config, crash_reports=True)
    app.add_configured_adapters()
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    if not app.adapters:
        logging.getLogger("sdhost").warning(
            "no chat platform is configured; running the job workers only "
            "(try `sdhost chat` for a terminal chat)"
        )
    chats = ", ".join(app.adapters) or "none"
    print(
        f"sdhost running: chats {chats}; providers {', '.join(app.providers) or 'none'}; "
        "Ctrl-C stops",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.stop()
    return 0


async def _with_app(args: argparse.Namespace, fn: object) -> int:
    config = _load(args)
    app = App(config, run_workers=False)
    await app.start()
    try:
        return await fn(app)  # type: ignore[operator]
    finally:
        await app.stop()


async def _credits(args: argparse.Namespace) -> int:
    ref = _user(args.user)

    async def go(app: App) -> int:
        if args.action == "show":
            balance = await app.jobs.balance(ref)
        elif args.action == "grant":
            balance = await app.jobs.grant(ref, args.amount, note=args.note or "cli grant")
        else:
            balance = await app.jobs.set_balance(ref, args.amount, note=args.note or "")
        print(f"{ref.key}: {balance} credits")
        return 0

    return await _with_app(args, go)


async def _jobs(args: argparse.Namespace) -> int:
    from bot.commands import format_job

    async def go(app: App) -> int:
        if args.action == "list":
            views = await app.jobs.all_jobs(status=args.status, limit=args.limit)
            for v in views:
                when = datetime.fromtimestamp(v.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
                prompt = str(v.params.get("prompt", ""))[:50]
                print(
                    f"#{v.id}\t{v.status}\t{v.kind}\t{v.provider}\tuser {v.user_id}\t"
                    f"{when}\t{prompt}"
                )
            if not views:
                print("no jobs")
        elif args.action == "show":
            print(format_job(await app.jobs.job(None, args.id), paths=True))
        else:
            print(await app.jobs.cancel(None, args.id))
        return 0

    return await _with_app(args, go)


async def _store(args: argparse.Namespace) -> int:
    from bot.housekeeping import sweep_store

    async def go(app: App) -> int:
        removed = await sweep_store(app.db, app.files, grace_s=args.grace)
        for path in removed:
            print(f"removed {path}")
        print(f"{len(removed)} file(s) no row refers to removed from {app.files.describe()}")
        return 0

    return await _with_app(args, go)


async def _db(args: argparse.Namespace) -> int:
    config = _load(args)
    app = App(config, run_workers=False)
    try:
        await app.migrate()
        print(f"database is at the newest schema ({_redact(config.database_url)})")
    finally:
        await app.stop()
    return 0


async def _with_database(
    args: argparse.Namespace,
    fn: Callable[[Config, Database], Awaitable[int]],
    *,
    models_changed: bool = False,
) -> int:
    """Run ``fn(config, db)`` with the app's database, migrated as the app does, and nothing
    else of the app started. ``models_changed``: when it succeeds, model files may have
    arrived: the providers that serve model folders (your own GPUs) look again."""
    config = _load(args)
    app = App(config, run_workers=False)
    try:
        if config.database.auto_migrate:
            await app.migrate()
        code = await fn(config, app.db)
        if code == 0 and models_changed:
            await app.models_changed()
        return code
    finally:
        await app.stop()


async def _civitai(args: argparse.Namespace) -> int:
    from adapters.civitai import cli

    if args.action == "images":  # the harvest keeps its state in files, not the database
        return await cli.run_harvest_cli(args, _load(args))
    return await _with_database(
        args, lambda config, db: cli.run_cli(args, config, db), models_changed=True
    )


async def _models(args: argparse.Namespace) -> int:
    from adapters.civitai import cli

    return await _with_database(
        args, lambda config, db: cli.run_scan_cli(args, config, db), models_changed=True
    )


async def _telegram(args: argparse.Namespace) -> int:
    """Set the bot's webhook once (every process behind the balancer shares it), or delete
    it (to poll again)."""
    config = _load(args)
    if not config.telegram.enabled:
        raise UserError("set telegram.token (or SDHOST_TELEGRAM__TOKEN) first")
    from adapters.chat.telegram.adapter import delete_webhook, set_webhook

    cfg = config.telegram
    if args.action == "set-webhook":
        if not cfg.webhook_url:
            raise UserError("set telegram.webhook_url (the public URL of the balancer) first")
        await set_webhook(cfg)
        print(f"webhook set: Telegram posts this bot's updates to {cfg.webhook_url}")
    else:
        await delete_webhook(cfg)
        print("webhook deleted: a process in polling mode may take the updates now")
    return 0


async def _discord(args: argparse.Namespace) -> int:
    """Publish the slash commands now (to discord.guild_ids, else globally)."""
    config = _load(args)
    if not config.discord.enabled:
        raise UserError("set discord.token (or SDHOST_DISCORD__TOKEN) first")
    from adapters.chat.discord import DiscordAdapter

    app = App(config, run_workers=False)
    adapter = DiscordAdapter(app)
    adapter.cfg = adapter.cfg.model_copy(update={"sync_commands": False})
    try:
        await adapter.connect()
        names = await adapter.sync()
        where = (
            "guilds " + ", ".join(str(g) for g in config.discord.guild_ids)
            if config.discord.guild_ids
            else "everywhere (global; Discord may take up to an hour to show changes)"
        )
        print(f"synced {len(names)} commands to {where}: {', '.join(sorted(names))}")
    finally:
        await adapter.disconnect()
        await app.stop()
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _config_check(args: argparse.Namespace) -> int:
    path = args.file or args.config or DEFAULT_CONFIG
    config = load_config(path)
    platforms = (("telegram", config.telegram.enabled), ("discord", config.discord.enabled))
    chats = ", ".join(n for n, on in platforms if on) or "none"
    print(
        f"{path}: ok (database {_redact(config.database_url)}, providers: "
        f"{', '.join(_configured_providers(config)) or 'none'}, "
        f"chats: {chats})"
    )
    return 0


def _configured_providers(config: Config) -> list[str]:
    p = config.providers
    names = ["demo"] if p.demo.enabled else []
    return names + [n for n in ("dashscope", "liblib", "bfl") if getattr(p, n).active]


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--config and --verbose, accepted before the subcommand and after it alike
    (``sdhost --config F chat`` and ``sdhost chat --config F``)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help=f"config file (default: ./{DEFAULT_CONFIG} if present, else built-in defaults)",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="debug logging to stderr",
    )


class _Parser(argparse.ArgumentParser):
    """Every subcommand parser also takes --config and --verbose."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _common(self, top=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdhost", description="Self-hosted image-generation bot")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    chat = sub.add_parser("chat", help="chat with the bot in this terminal")
    chat.add_argument("--user", help="who you are in the chat (default: your OS user name)")

    sub.add_parser("run", help="run the bot with the chat platforms in the config")

    cr = sub.add_parser("credits", help="show or change a person's credits")
    cr_sub = cr.add_subparsers(dest="action", required=True)
    s = cr_sub.add_parser("show", help="show a balance")
    s.add_argument("user", help="platform:id, e.g. telegram:12345, or a console user name")
    for name in ("grant", "set"):
        g = cr_sub.add_parser(name, help=f"{name} credits")
        g.add_argument("user")
        g.add_argument("amount", type=int)
        g.add_argument("--note", default="")

    jb = sub.add_parser("jobs", help="list, show or cancel jobs")
    jb_sub = jb.add_subparsers(dest="action", required=True)
    ls = jb_sub.add_parser("list", help="recent jobs")
    ls.add_argument("--status", choices=[str(s) for s in JobStatus])
    ls.add_argument("--limit", type=int, default=50)
    for name in ("show", "cancel"):
        j = jb_sub.add_parser(name, help=f"{name} one job")
        j.add_argument("id", type=int)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="action", required=True)
    db_sub.add_parser("upgrade", help="migrate the database to the newest schema")

    st = sub.add_parser("store", help="the picture store")
    st_sub = st.add_subparsers(dest="action", required=True)
    sw = st_sub.add_parser("sweep", help="remove stored files that no job or picture refers to")
    sw.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep files younger than this whatever the database says (default 600)",
    )

    cv = sub.add_parser("civitai", help="Civitai: harvest images, download models")
    cv_sub = cv.add_subparsers(dest="action", required=True)
    from adapters.civitai import cli as civitai_cli

    civitai_cli.add_arguments(cv_sub.add_parser("download", help="download a model file"))

    civitai_cli.add_harvest_arguments(
        cv_sub.add_parser("images", help="harvest images with their metadata")
    )
    md = sub.add_parser("models", help="the local model registry")
    md_sub = md.add_subparsers(dest="action", required=True)
    civitai_cli.add_scan_arguments(
        md_sub.add_parser("scan", help="hash the model folders and look the files up on Civitai")
    )

    tg = sub.add_parser("telegram", help="Telegram maintenance")
    tg_sub = tg.add_subparsers(dest="action", required=True)
    tg_sub.add_parser("set-webhook", help="point the bot's webhook at telegram.webhook_url, once")
    tg_sub.add_parser("delete-webhook", help="delete the bot's webhook (to poll again)")

    dc = sub.add_parser("discord", help="Discord maintenance")
    dc_sub = dc.add_subparsers(dest="action", required=True)
    dc_sub.add_parser("sync", help="publish the slash commands now")

    cf = sub.add_parser("config", help="configuration")
    cf_sub = cf.add_subparsers(dest="action", required=True)
    ck = cf_sub.add_parser("check", help="validate a config file")
    ck.add_argument("file", nargs="?")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            return _config_check(args)
        runner = {
            "chat": _chat,
            "run": _run,
            "credits": _credits,
            "jobs": _jobs,
            "db": _db,
            "store": _store,
            "discord": _discord,
            "telegram": _telegram,
            "civitai": _civitai,
            "models": _models,
        }[args.command]
        return asyncio.run(runner(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # the Civitai commands said where they stopped and how to go on
        if args.command in ("chat", "run"):
            print(
                "\nstopped; queued jobs stay queued and resume on the next start", file=sys.stderr
            )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
