"""No secret reaches a log, at any level: the bot is run as an operator runs it, at DEBUG,
against the fakes of every keyed service, and its whole output is searched for each secret
(and for every LiblibAI signature and Discord interaction token it sent)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.config import Config
from bot.redact import MASK, RedactingFilter, Redactor, install
from tests.conftest import empty_database
from tests.fakes.bfl import FakeBfl
from tests.fakes.civitai import FakeCivitai
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.discord_api import CHANNEL_ID, FakeDiscord
from tests.fakes.liblib import FakeLiblib
from tests.fakes.telegram import FakeTelegram
from tests.test_console import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TG_TOKEN = "7654321098:AAtgSECRET-bot-token_value-0123456789"
TG_WEBHOOK = "tgWEBHOOKsecretVALUE42"
DISCORD_TOKEN = "MTIz.DISCORDsecret.token-value-987"
LIBLIB_AK, LIBLIB_SK = "akLIBLIBaccessKEY123", "skLIBLIBsecretKEY456"
DASHSCOPE_KEY = "sk-DASHSCOPEsecretKEY789"
BFL_KEY = "bflSECRETxKEYvalue321"
CIVITAI_KEY = "civitaiSECRETapiKEY654"
PG_PASSWORD = "pgSECRETpassword111"
ANN = 1001


async def _until(pred: Callable[[], Any], what: str, timeout: float = 40) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while not (value := pred()):
                await asyncio.sleep(0.05)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_nothing_secret_reaches_the_log_at_debug(tmp_path: Path, db_url: str) -> None:
    secrets = [TG_TOKEN, TG_WEBHOOK, DISCORD_TOKEN, LIBLIB_AK, LIBLIB_SK, DASHSCOPE_KEY]
    secrets += [BFL_KEY, CIVITAI_KEY]
    if db_url.startswith("postgresql"):
        # trust authentication ignores the password, so a recognisable one can ride along
        await empty_database(db_url)
        db_url = make_url(db_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)
        secrets.append(PG_PASSWORD)
    async with (
        FakeTelegram(token=TG_TOKEN) as tg,
        FakeDiscord(token=DISCORD_TOKEN) as dc,
        FakeLiblib(keys={LIBLIB_AK: LIBLIB_SK}) as ll,
        FakeDashScope(keys={DASHSCOPE_KEY}, queue_delay_s=0.05, run_delay_s=0.05) as ds,
        FakeBfl(keys=[BFL_KEY]) as bfl,
        FakeCivitai(keys={CIVITAI_KEY: "alice"}) as cv,
    ):
        poll = "poll_first_s = 0.05\npoll_max_interval_s = 0.2\nmax_retries = 2"
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f"""
[data]
dir = "{tmp_path / "data"}"
[database]
url = "{db_url}"
[queue]
poll_idle_s = 0.05
[logging]
level = "DEBUG"
[providers.demo]
latency_s = 0.05
[providers.liblib]
base_url = "{ll.base_url}"
{poll}
[providers.dashscope]
base_url = "{ds.base_url}"
{poll}
[providers.bfl]
base_url = "{bfl.base_url}"
{poll}
[telegram]
base_url = "{tg.base_url}"
base_file_url = "{tg.base_file_url}"
poll_timeout_s = 1
progress_edit_s = 0.05
[discord]
api_base_url = "{dc.api_base}"
gateway_url = "{dc.gateway_url}"
[civitai]
base_url = "{cv.base_url}"
image_hosts = ["127.0.0.1"]
""",
            encoding="utf-8",
        )
        environ = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # the secrets come from the environment, as the README advises
            "SDHOST_TELEGRAM__TOKEN": TG_TOKEN,
            "SDHOST_TELEGRAM__WEBHOOK_SECRET": TG_WEBHOOK,
            "SDHOST_DISCORD__TOKEN": DISCORD_TOKEN,
            "SDHOST_PROVIDERS__LIBLIB__KEYS": f'[{{key = "{LIBLIB_AK}", secret = "{LIBLIB_SK}"}}]',
            "SDHOST_PROVIDERS__DASHSCOPE__KEYS": f'[{{key = "{DASHSCOPE_KEY}"}}]',
            "SDHOST_PROVIDERS__BFL__KEYS": f'[{{key = "{BFL_KEY}"}}]',
            "SDHOST_CIVITAI__API_KEY": CIVITAI_KEY,
        }
        environ.pop("SDHOST_DATABASE__URL", None)
        log_path = tmp_path / "stderr.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "run",
                "-v",
                "--config",
                str(cfg),
                cwd=ROOT,
                env=environ,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                assert b"telegram" in line and b"discord" in line, log_path.read_text()
                # a job on each keyed provider, one failing call on the way (an error
                # logged with what was sent), and a Civitai lookup with its pictures
                ll.fail_next(100000, "server error", 500, times=1)
                for provider in ("liblib", "dashscope", "bfl"):
                    tg.inject_message(ANN, ANN, f"/imagine a lighthouse --provider {provider}")
                tg.inject_message(ANN, ANN, "/civitai models --type LORA")
                tg.inject_message(ANN, ANN, "/civitai image 90013")
                inter = dc.slash("imagine", {"prompt": "a windmill"})

                def photos() -> int:
                    return len([m for m in tg.sent_messages(ANN) if m.photo_bytes])

                await _until(lambda: photos() >= 3, "three pictures on Telegram")
                await _until(
                    lambda: (
                        [m for m in dc.channel_messages(CHANNEL_ID) if m.get("attachments")]
                        or dc.interaction_responses(inter["token"])[1:]
                    ),
                    "the Discord job",
                )
                await _until(lambda: cv.calls_to("models"), "the Civitai lookup")
                await _until(
                    lambda: [m for m in tg.sent_messages(ANN) if "#90013" in (m.caption or "")],
                    "the Civitai image",
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 30)
        log = log_path.read_text(encoding="utf-8", errors="replace")
        assert code == 0, log[-3000:]

    # what was sent, per request, that is as secret as the keys themselves
    signed = [c.query for c in ll.calls]
    assert signed and all(q.get("Signature") for q in signed)
    secrets += [q["Signature"] for q in signed] + [q["SignatureNonce"] for q in signed]
    secrets.append(inter["token"])
    leaked = sorted({s for s in secrets if s in log})
    assert leaked == [], [line for line in log.splitlines() if any(s in line for s in leaked)][:5]
    # the log is there, at DEBUG, and names the requests (masked)
    assert "DEBUG" in log and "/bot***/getMe" in log and "AccessKey=***" in log, log[-3000:]


# --- the filter itself ------------------------------------------------------------------------


def _capture(secrets: list[str]) -> tuple[logging.Logger, list[str]]:
    out: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(self.format(record))

    parent = logging.getLogger(f"redaction-test-{len(secrets)}-{id(out)}")
    parent.propagate = False
    parent.setLevel(logging.DEBUG)
    parent.addHandler(ListHandler())
    install(secrets, logger=parent)
    return parent, out


def test_lazy_arguments_tracebacks_and_child_loggers_are_masked() -> None:
    saved = sys.excepthook
    try:
        parent, out = _capture(["hunter2-secret", "hunter2/se cret"])
        child = parent.getChild("httpx")  # another library's logger, through the handler
        child.info("HTTP Request: %s %r", "GET", "http://h/x?token=abc&key=hunter2-secret")
        try:
            raise RuntimeError("failed for http://h/bot123456:AAbbccddeeffgghhiijjkkllmmnnoopp/x")
        except RuntimeError:
            child.exception("boom %s", {"Authorization": "Bearer hunter2-secret"})
        child.debug("url-encoded %s", "a=hunter2%2Fse%20cret b=hunter2%2Fse+cret hunter2/se cret")
    finally:
        sys.excepthook = saved
    text = "\n".join(out)
    assert "hunter2" not in text and "AAbbccdd" not in text and "abc&" not in text, text
    assert "token=***" in text and "/bot***/x" in text and "Traceback" in text


def test_config_secrets_are_every_key_token_and_password() -> None:
    config = Config.model_validate(
        {
            "database": {"url": "postgresql+asyncpg://u:dbPASSWORD@h/db"},
            "telegram": {"token": TG_TOKEN},
            "discord": {"token": DISCORD_TOKEN},
            "civitai": {"api_key": CIVITAI_KEY},
            "providers": {
                "liblib": {"keys": [{"key": LIBLIB_AK, "secret": LIBLIB_SK}]},
                "dashscope": {"keys": [{"key": DASHSCOPE_KEY}]},
                "bfl": {"keys": [{"key": BFL_KEY}]},
            },
        }
    )
    found = config.secrets()
    expected = {TG_TOKEN, DISCORD_TOKEN, CIVITAI_KEY, LIBLIB_AK, LIBLIB_SK, DASHSCOPE_KEY}
    expected |= {BFL_KEY, "dbPASSWORD", config.telegram.effective_webhook_secret}
    assert found == expected


def test_redactor_masks_the_shapes_of_secrets() -> None:
    r = Redactor()
    assert r("GET /file/bot123:abc_DEF-1/photos/a.jpg") == f"GET /file/bot{MASK}/photos/a.jpg"
    assert r("?AccessKey=a&Signature=b&Timestamp=1&SignatureNonce=c") == (
        f"?AccessKey={MASK}&Signature={MASK}&Timestamp=1&SignatureNonce={MASK}"
    )
    assert r("x-key: abc123") == f"x-key: {MASK}"
    assert r("Authorization: Bot abc.def") == f"Authorization: {MASK}"
    assert r("postgresql://me:pw@db/x") == f"postgresql://me:{MASK}@db/x"
    assert MASK in r("PATCH /webhooks/1/aW50ZXJhY3Rpb246MTIzNDU2Nzg5/messages/@original")
    assert r("token_margin_s = 60; key1 took the task") == "token_margin_s = 60; key1 took the task"
    assert isinstance(RedactingFilter(r), logging.Filter)


def test_an_uncaught_exception_is_printed_masked() -> None:
    import subprocess

    code = (
        "import logging; from bot import redact; logging.basicConfig(); "
        "redact.install(['topSECRETvalue']); "
        "logging.getLogger('x').warning('sent %s', 'topSECRETvalue'); "
        "raise RuntimeError('GET /bot123456:AAsecretTOKENsecretTOKENsecretTOKEN1 topSECRETvalue')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "RuntimeError: GET /bot***" in done.stderr, done.stderr
    assert "topSECRET" not in done.stderr and "AAsecret" not in done.stderr
    assert "sent ***" in done.stderr
