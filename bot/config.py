"""Typed configuration: one TOML file, every key with a default, secrets from the environment.

Environment variables override the file: ``SDHOST_<SECTION>__<KEY>`` (for example
``SDHOST_DATABASE__URL`` or ``SDHOST_TELEGRAM__TOKEN``), so secrets never need to be written
into ``config.toml``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.errors import FailureClass


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class S3StoreConfig(_Section):
    """An S3-compatible bucket for the pictures (``data.store = "s3"``): AWS S3, SeaweedFS,
    MinIO... Keys are the local store's (``images/ab/<sha>.png``)."""

    endpoint_url: str = "http://127.0.0.1:8333"  # empty: AWS S3 itself
    bucket: str = "sdhost"
    access_key: str = ""  # empty: botocore's chain (AWS_* environment, instance role)
    secret_key: str = ""
    region: str = ""  # empty: us-east-1
    public_base_url: str = ""  # optional: a CDN in front of the bucket, for links shown
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)  # per request, botocore's retries included


class DataConfig(_Section):
    dir: Path = Path("./data")
    store: Literal["local", "s3"] = "local"
    s3: S3StoreConfig = Field(default_factory=S3StoreConfig)

    @model_validator(mode="after")
    def _bucket_named(self) -> DataConfig:
        if self.store == "s3" and not self.s3.bucket.strip():
            raise ValueError('data.store = "s3" needs data.s3.bucket')
        return self


class DatabaseConfig(_Section):
    url: str = ""  # empty: sqlite+aiosqlite:///<data.dir>/sdhost.db
    busy_timeout_ms: int = Field(5000, ge=0)
    auto_migrate: bool = True
    echo: bool = False


class RefundConfig(_Section):
    """Which failure classes give the credits back, per kind of job.

    A job that never reached a provider is always refunded, whatever this says.
    Defaults follow seed 003: img2img failures are refunded, batch tasks are not
    (they consumed the provider's resources), cancelled-before-start is refunded.
    """

    txt2img: list[FailureClass] = [
        FailureClass.BAD_INPUT,
        FailureClass.REFUSED,
        FailureClass.PROVIDER_ERROR,
        FailureClass.TIMEOUT,
        FailureClass.CRASH,
    ]
    img2img: list[FailureClass] = [
        FailureClass.BAD_INPUT,
        FailureClass.REFUSED,
        FailureClass.PROVIDER_ERROR,
        FailureClass.TIMEOUT,
        FailureClass.CRASH,
    ]
    batch: list[FailureClass] = [FailureClass.BAD_INPUT, FailureClass.CRASH]


class CreditsConfig(_Section):
    starting_grant: int = Field(20, ge=0)
    # price per image (txt2img, img2img) or per task (batch)
    prices: dict[str, int] = {"txt2img": 1, "img2img": 2, "batch": 1}
    # per-provider overrides: {"bfl": {"txt2img": 4}}
    provider_prices: dict[str, dict[str, int]] = {}
    refunds: RefundConfig = RefundConfig()

    @field_validator("prices")
    @classmethod
    def _known_kinds(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = set(v) - {"txt2img", "img2img", "batch"}
        if unknown:
            raise ValueError(f"unknown job kind(s) {sorted(unknown)}; use txt2img, img2img, batch")
        if any(p < 0 for p in v.values()):
            raise ValueError("prices cannot be negative")
        return {"txt2img": 1, "img2img": 2, "batch": 1} | v


class QueueConfig(_Section):
    max_queued_per_user: int = Field(20, ge=1)
    max_running_per_user: int = Field(4, ge=1)
    job_timeout_s: float = Field(300, gt=0)
    max_attempts: int = Field(3, ge=1)  # crashes before a job is quarantined
    # Times a process may die under one job without a crash report (kill -9, the OOM
    # killer, a reboot: not counted as attempts) before the job is set aside anyway.
    max_lost_runs: int = Field(default=10, ge=1)
    lease_s: float = Field(30, gt=1)
    poll_idle_s: float = Field(0.5, gt=0)  # how often an idle worker looks for others' jobs
    # PostgreSQL: new jobs and outbox events wake idle processes at once (LISTEN/NOTIFY);
    # the poll above stays as the safety net. False: polling alone (for comparison).
    listen: bool = True
    retry_backoff_s: float = Field(2.0, ge=0)
    # False: this process takes commands and delivers results but runs no jobs (a chat
    # front end in front of worker processes that share its database).
    run_workers: bool = True


class ImagesConfig(_Section):
    max_input_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_input_pixels: int = Field(40_000_000, gt=0)
    fetch_timeout_s: float = Field(20, gt=0)
    allow_private_urls: bool = False
    default_size: int = Field(1024, ge=64, le=4096)  # the long side when only --ar is given
    # A running job's live preview (self-hosted GPUs) in its chat status: at most one
    # picture edit per status message this often, in seconds; 0: no previews.
    preview_interval_s: float = Field(4.0, ge=0)


class ProviderSection(_Section):
    """What every provider's section has."""

    enabled: bool = True
    # Jobs this process runs on the provider at the same time.
    concurrency: int = Field(4, ge=1)
    # Jobs running on the provider across every process sharing the database (an API
    # key's limit, one GPU server); 0: no limit beyond each process's concurrency.
    max_running: int = Field(0, ge=0)


class DemoProviderConfig(ProviderSection):
    latency_s: float = Field(1.5, ge=0)  # simulated generation time per job
    failure_rate: float = Field(0.0, ge=0, le=1)  # share of jobs that fail (provider_error)
    max_size: int = Field(1536, ge=64)


class ApiKeyConfig(_Section):
    """One API key of a hosted provider, with how many tasks it may run at once."""

    key: str
    secret: str = ""  # LiblibAI: the SecretKey that signs requests (key is the AccessKey)
    concurrency: int = Field(2, ge=1)
    name: str = ""  # shown in logs and stored with tasks; default key1, key2, ...
    # The account the key belongs to, where limits are per account (DashScope: all keys
    # of one Alibaba Cloud account share them); empty: the key is an account of its own.
    account: str = ""


class CloudProviderSection(ProviderSection):
    """What every hosted provider's section has. It runs when it has at least one key; the
    jobs it runs at once are the sum of its keys' concurrency (and at most ``concurrency``)."""

    base_url: str = ""
    keys: list[ApiKeyConfig] = []
    concurrency: int = Field(16, ge=1)
    request_timeout_s: float = Field(30, gt=0)
    # Polling a task of a model not seen yet: the first wait, growing by poll_factor up to
    # poll_max_interval_s (7 polls for a 30 s task). Once a model's tasks have ended, polls
    # gather around its learnt duration (adapters/providers/cloud.py).
    poll_first_s: float = Field(1.0, gt=0)
    poll_factor: float = Field(1.6, ge=1)
    poll_max_interval_s: float = Field(8.0, gt=0)
    # Throttled or failing calls are retried this many times, honouring Retry-After.
    max_retries: int = Field(4, ge=0)

    @field_validator("keys", mode="before")
    @classmethod
    def _plain_keys(cls, v: Any) -> Any:
        # keys = ["sk-..."] is the short form of keys = [{ key = "sk-..." }]
        if isinstance(v, list):
            return [{"key": k} if isinstance(k, str) else k for k in v]
        return v

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.keys)


class DashScopeConfig(CloudProviderSection):
    base_url: str = "https://dashscope.aliyuncs.com"  # international: dashscope-intl
    # beijing, singapore or us; empty: from base_url's host. wanx2.1-imageedit exists only
    # in Beijing; elsewhere img2img goes to wan2.5-i2i-preview.
    region: Literal["", "beijing", "singapore", "us"] = ""
    default_model: str = "wanx2.1-t2i-turbo"
    edit_model: str = ""  # img2img model; empty: wanx2.1-imageedit, or wan2.5-i2i-preview
    edit_function: str = "stylization_all"
    prompt_extend: bool = False
    watermark: bool = False
    # Limits of an Alibaba Cloud account, shared by all its keys (keys name their account):
    # tasks in progress, and task submissions per second.
    account_concurrency: int = Field(2, ge=1)
    account_submits_per_s: float = Field(2.0, gt=0)
    # wanx2.1-imageedit:super_resolution (upscale) and :expand (outpaint)
    upscale_factor: int = Field(2, ge=1, le=4)
    expand_scale: float = Field(1.5, ge=1.0, le=2.0)


class LiblibModelConfig(_Section):
    """A custom LiblibAI model: a checkpoint and LoRAs, named for /models and --model."""

    checkpoint_id: str
    loras: list[dict[str, Any]] = []  # [{model_id = "...", weight = 0.8}]
    sampler: int = 15  # LiblibAI's sampler number
    clip_skip: int = Field(2, ge=1, le=12)
    description: str = ""
    # Which templates it runs with: "sd" (1.5/XL) or "f1" (F.1 checkpoints need the F.1
    # templates); template_uuid / img2img_template_uuid name others outright.
    base: Literal["sd", "f1"] = "sd"
    template_uuid: str = ""
    img2img_template_uuid: str = ""


class LiblibConfig(CloudProviderSection):
    base_url: str = "https://openapi.liblibai.cloud"
    star3_template_uuid: str = "5d7e67009b344550bc1aa6ccbfa1d7f4"
    star3_img2img_template_uuid: str = "07e00af4fc464c7ab55ff906f8acf1b7"
    custom_template_uuid: str = "e10adc3949ba59abbe56e057f20f883e"
    custom_img2img_template_uuid: str = "9c7d531dc75f476aa833b3d452b8f7ad"
    f1_template_uuid: str = "6f7c4652458d4802969f8d089cf5b91f"
    f1_img2img_template_uuid: str = "63b72710c9574457ba303d9d9b8df8bd"
    models: dict[str, LiblibModelConfig] = {}

    @model_validator(mode="after")
    def _five_tasks_per_key(self) -> LiblibConfig:
        # LiblibAI runs 5 generation tasks at once by default
        for key in self.keys:
            if "concurrency" not in key.model_fields_set:
                key.concurrency = 5
        return self


class BflConfig(CloudProviderSection):
    base_url: str = "https://api.bfl.ai/v1"
    default_model: str = "flux-pro-1.1"
    # img2img on the default model goes to this one (empty: the default model itself);
    # BFL recommends FLUX.2 [pro] for editing over the legacy Kontext.
    edit_model: str = "flux-2-pro"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    safety_tolerance: int = Field(2, ge=0, le=6)
    # Hosts (host or host:port) besides *.bfl.ai and base_url's that may receive the key
    # when a task's polling URL names them: a proxy or mirror of yours.
    key_hosts: list[str] = []
    # flux-pro-1.1-ultra only: less processed, more natural-looking pictures.
    raw: bool = False
    # Let BFL rewrite the prompt into a richer one (models that take it: flux-pro-1.1,
    # ultra, dev, Kontext, flux-2-flex).
    prompt_upsampling: bool = False


ANON_HORDE_KEY = "0000000000"  # AI Horde's anonymous key: works, with the lowest priority


class HordeConfig(ProviderSection):
    """AI Horde (aihorde.net): a public pool of volunteer GPUs, free to use. Off by default;
    with the anonymous key it needs no account at all."""

    enabled: bool = False
    base_url: str = "https://aihorde.net/api"
    api_key: str = ANON_HORDE_KEY  # or SDHOST_PROVIDERS__HORDE__API_KEY
    # The Client-Agent header the pool asks every client to send ("name:version:contact");
    # empty: "sdhost:<version>:<contact>".
    client_agent: str = ""
    contact: str = "unknown"  # an email, a URL or a Discord name the pool's admins can reach
    default_model: str = "stable_diffusion"
    # The pool's model list (/v2/status/models) is fetched at most this often.
    models_ttl_s: float = Field(600, ge=10)
    request_timeout_s: float = Field(30, gt=0)
    # Waits between checks follow the pool's expected wait, up to this (never below the
    # pool's 1 s cache).
    poll_max_interval_s: float = Field(10.0, ge=1)
    # The status endpoint (the pictures) allows this many calls a minute.
    status_calls_per_minute: int = Field(10, ge=1)
    # Throttled or failing calls are retried this many times, honouring Retry-After.
    max_retries: int = Field(4, ge=0)
    # Only workers the pool trusts; slow workers too (a longer wait, a shorter queue).
    trusted_workers: bool = False
    slow_workers: bool = True
    # Share pictures with LAION (the pool charges fewer kudos; always on for anonymous).
    shared: bool = False

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.api_key)

    @property
    def effective_client_agent(self) -> str:
        if self.client_agent:
            return self.client_agent
        from importlib import metadata

        try:
            version = metadata.version("sdhost")
        except metadata.PackageNotFoundError:
            version = "0"
        contact = self.contact.replace(":", " ").strip() or "unknown"
        return f"sdhost:{version}:{contact}"


class GpuInstanceConfig(_Section):
    """One self-hosted web UI the operator runs (a GPU): a name for logs and /models, its
    URL, HTTP Basic credentials (A1111's --api-auth, or a proxy's), and headers sent with
    every request and websocket (a proxy's ``Authorization = "Bearer ..."``). Header
    values are secrets: they never reach the logs."""

    name: str = ""  # default gpu1, gpu2, ... in order
    url: str
    user: str = ""
    password: str = ""
    headers: dict[str, str] = {}


def _name_instances(instances: list[GpuInstanceConfig]) -> None:
    """gpu1, gpu2, ... for instances without a name; names unique; URLs that are URLs."""
    seen: set[str] = set()
    for i, inst in enumerate(instances, 1):
        if not inst.name:
            inst.name = f"gpu{i}"
        if inst.name in seen:
            raise ValueError(f"two instances are named {inst.name!r}")
        seen.add(inst.name)
        if not inst.url.startswith(("http://", "https://")):
            raise ValueError(f"instance {inst.name}: url must start with http:// or https://")


class GpuProviderSection(ProviderSection):
    """What every self-hosted backend's section has: its instances, pooled
    (adapters/providers/gpupool.py)."""

    instances: list[GpuInstanceConfig] = []
    default_model: str = ""  # a checkpoint; empty: whatever the instance has (see each)
    # Jobs this process holds at once: those rendering, plus three times as many waiting,
    # so a freed instance can pick one that needs no checkpoint switch. 0: four times the
    # instances.
    concurrency: int = Field(0, ge=0)
    # How often each instance's lists (checkpoints, LoRAs, samplers...) are read again.
    lists_ttl_s: float = Field(60, ge=1)
    # An instance that stopped answering is checked again after this, doubling up to the max.
    recheck_s: float = Field(2.0, gt=0)
    recheck_max_s: float = Field(60.0, gt=0)
    # A job no instance can take (all down) waits this long for one, then fails over to the
    # next provider in [providers] failover, or fails with its credits back.
    wait_for_instance_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _names(self) -> GpuProviderSection:
        _name_instances(self.instances)
        if not self.concurrency:
            self.concurrency = max(1, 4 * len(self.instances))
        return self

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.instances)


class A1111Config(GpuProviderSection):
    """The operator's own GPUs running the AUTOMATIC1111 web UI, Forge or SD.Next with
    --api: a pool, one job per instance at a time (adapters/providers/a1111).
    ``default_model`` empty: whatever the instance has loaded."""

    request_timeout_s: float = Field(600, gt=0)  # one picture, switch included
    # Progress (and the live preview) is read this often while a job renders.
    progress_interval_s: float = Field(1.0, gt=0)
    # --hires: the second pass's scale and denoising; the Upscale button's upscaler
    # (empty: the instance's first of R-ESRGAN 4x+, ESRGAN_4x, Lanczos).
    hires_scale: float = Field(2.0, ge=1.0, le=4.0)
    hires_denoise: float = Field(0.45, ge=0.0, le=1.0)
    upscaler: str = ""
    # Forge: the extra files (text encoders, VAE) a checkpoint needs, by checkpoint name,
    # sent as forge_additional_modules whenever it is loaded (Flux: the clip_l, t5xxl and
    # ae files): { "flux1-dev-fp8" = ["clip_l.safetensors", "t5xxl.safetensors", "ae.sft"] }
    forge_modules: dict[str, list[str]] = {}


class ComfyUIConfig(GpuProviderSection):
    """The operator's own GPUs running ComfyUI: shipped workflows and the operator's own
    (adapters/providers/comfyui), pooled like AUTOMATIC1111's instances.
    ``default_model`` empty: the first checkpoint the instances list."""

    workflows_dir: str = ""  # API-format workflow files; empty: only the shipped ones
    default_workflow: str = "txt2img"
    # The upscale workflow's model (UpscaleModelLoader); empty: the first the instance has.
    upscale_model: str = ""
    request_timeout_s: float = Field(60, gt=0)  # one HTTP call (a job is followed by socket)
    # Previews: ComfyUI sends none unless asked ("auto", "latent2rgb", "taesd"; "none": off).
    preview_method: str = "auto"


class ProvidersConfig(_Section):
    default: str = "demo"
    # When a provider is down or throttled past its retries, jobs that have not reached it
    # move to the next one in its chain: { dashscope = ["bfl", "demo"] }. Never charged twice.
    failover: dict[str, list[str]] = {}
    # Short names for models: { fast = "dashscope:wanx2.1-t2i-turbo" }
    aliases: dict[str, str] = {}
    # A chat's default model (below a person's own /settings), by "platform:id" of the chat,
    # Discord channel or Discord server: { "telegram:-1001234567890" = "bfl:flux-pro-1.1" }
    chat_models: dict[str, str] = {}
    demo: DemoProviderConfig = DemoProviderConfig()
    dashscope: DashScopeConfig = DashScopeConfig()
    liblib: LiblibConfig = LiblibConfig()
    bfl: BflConfig = BflConfig()
    horde: HordeConfig = HordeConfig()
    a1111: A1111Config = A1111Config()
    comfyui: ComfyUIConfig = ComfyUIConfig()


class ConsoleConfig(_Section):
    user: str = ""  # empty: the OS user name


NsfwPolicy = Literal["allow", "blur", "block"]


WEBHOOK_PORTS = (443, 80, 88, 8443)
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


class TelegramConfig(_Section):
    """The Telegram bot. It runs when a token is set (here or in SDHOST_TELEGRAM__TOKEN)."""

    token: str = ""
    # A local Bot API server or a proxy can stand in for Telegram's own.
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str = "https://api.telegram.org/file/bot"
    # True with a local Bot API server started with --local (files up to 2000 MB).
    local_mode: bool = False
    mode: Literal["polling", "webhook"] = "polling"
    poll_timeout_s: int = Field(30, ge=0, le=50)
    webhook_url: str = ""  # the public https URL Telegram posts updates to
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(8443, ge=0, le=65535)
    webhook_path: str = "/telegram"
    webhook_secret: str = ""  # empty: derived from the token
    # The webhook belongs to the bot, not to a process: every process behind the balancer
    # takes updates at webhook_url, and only one sets it (this, or `sdhost telegram
    # set-webhook` once). A process setting it for itself would take it from the others.
    set_webhook: bool = False
    # How long a process may take to handle an update before another one takes it over.
    update_lease_s: float = Field(120.0, gt=0)
    # Who may use the bot; empty lists: everyone.
    allowed_chats: list[int] = []
    allowed_users: list[int] = []
    # Telegram user ids that may run /grant, /ban, /unban, /stats (also [admin] users).
    admin_ids: list[int] = []
    # What happens to pictures flagged NSFW: allow, blur (sent as spoilers) or block.
    nsfw: NsfwPolicy = "blur"
    # Per-chat overrides: {"-1001234567890" = "allow"}.
    nsfw_chats: dict[str, NsfwPolicy] = {}
    # In a private chat, plain text (not a command) is a prompt for /imagine.
    private_text_is_prompt: bool = True
    # Replies are in this language when the person's Telegram language is neither en nor zh.
    default_lang: Literal["en", "zh"] = "en"
    # Pacing of what the bot sends (Telegram's flood limits); edits count too.
    per_chat_per_s: float = Field(1.0, gt=0)
    per_group_per_min: float = Field(20, gt=0)
    overall_per_s: float = Field(30, gt=0)
    # At most one progress edit per chat this often.
    progress_edit_s: float = Field(2.0, ge=0)
    # Flood waits up to this long are waited out in place; longer ones reschedule the send.
    max_inline_wait_s: float = Field(30, ge=0)
    # Updates handled at the same time (different chats run in parallel).
    concurrent_updates: int = Field(32, ge=1)

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_charset(cls, v: str) -> str:
        if v and not _WEBHOOK_SECRET.fullmatch(v):
            raise ValueError(
                "Telegram accepts a webhook secret of 1 to 256 characters A-Z a-z 0-9 _ -"
            )
        return v

    @model_validator(mode="after")
    def _webhook_url_telegram_posts_to(self) -> TelegramConfig:
        # Telegram's own servers post only over https to ports 443, 80, 88 and 8443; a local
        # Bot API server (base_url elsewhere) posts to any port, also over http.
        if self.mode != "webhook" or not self.webhook_url:
            return self
        url = urlsplit(self.webhook_url)
        if urlsplit(self.base_url).hostname != "api.telegram.org":
            return self
        if url.scheme != "https":
            raise ValueError(f"telegram.webhook_url must be https:// ({self.webhook_url})")
        try:
            port = url.port or 443
        except ValueError:
            raise ValueError(f"telegram.webhook_url has a bad port ({self.webhook_url})") from None
        if port not in WEBHOOK_PORTS:
            raise ValueError(
                f"Telegram posts only to ports 443, 80, 88 and 8443; telegram.webhook_url "
                f"uses {port} (let the reverse proxy listen on one of those)"
            )
        return self

    @property
    def effective_webhook_secret(self) -> str:
        """The secret Telegram sends with each webhook update: ``webhook_secret``, else one
        derived from the token."""
        return self.webhook_secret or hashlib.sha256(self.token.encode()).hexdigest()[:48]


class DiscordConfig(_Section):
    """The Discord bot. It runs when a token is set (here or in SDHOST_DISCORD__TOKEN)."""

    token: str = ""
    # Discord's REST API and gateway, or a proxy standing in for them.
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    # The application's id (General Information in the Developer Portal); 0: ask Discord.
    application_id: int = Field(0, ge=0)
    # Publish the slash commands at start-up: to these guilds at once (development), or
    # globally when the list is empty (Discord takes up to an hour to show global changes).
    sync_commands: bool = True
    guild_ids: list[int] = []
    # Who may use the bot; empty lists: everyone. With any set, a command is taken when
    # its guild, its channel or one of the member's roles is listed (admins always).
    allowed_guilds: list[int] = []
    allowed_channels: list[int] = []
    allowed_roles: list[int] = []
    # Discord user ids that may run /grant, /ban, /unban, /stats (also [admin] users).
    admin_ids: list[int] = []
    # Pictures flagged NSFW, in channels not marked NSFW (and in DMs): "spoiler", "block",
    # or "allow". Channels marked NSFW always get them as they are.
    nsfw: Literal["allow", "spoiler", "block"] = "spoiler"
    # One gateway connection per shard, as Discord asks of bots in many servers.
    sharded: bool = False
    # Several processes: each runs a slice of the shards (shard_ids of shard_count, the
    # same shard_count everywhere); a guild's events go to shard (guild_id >> 22) %
    # shard_count. Pictures go out over REST, so any process delivers any job's.
    shard_ids: list[int] = []
    shard_count: int = Field(0, ge=0)  # 0: as many as Discord recommends (with sharded)
    # At most one progress edit of a response this often, in seconds.
    progress_edit_s: float = Field(2.0, ge=0)
    # Stop using an interaction's token this long before its 15 minutes run out; later
    # results are posted in the channel with a mention.
    token_margin_s: float = Field(60, ge=0, le=600)
    default_lang: Literal["en", "zh"] = "en"

    @model_validator(mode="after")
    def _shards_of_the_count(self) -> DiscordConfig:
        if self.shard_ids:
            if not self.shard_count:
                raise ValueError("discord.shard_ids needs discord.shard_count (the total)")
            bad = [s for s in self.shard_ids if not 0 <= s < self.shard_count]
            if bad:
                raise ValueError(
                    f"discord.shard_ids {bad} are not shards of discord.shard_count = "
                    f"{self.shard_count} (0 to {self.shard_count - 1})"
                )
            if len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError("discord.shard_ids lists a shard twice")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.token)


class CivitaiConfig(_Section):
    """Civitai lookups (/civitai). Works without a key; some models need one."""

    enabled: bool = True
    base_url: str = "https://civitai.com"
    api_key: str = ""  # or SDHOST_CIVITAI__API_KEY; sent only in the Authorization header
    timeout_s: float = Field(30, gt=0)
    # Model downloads (`sdhost civitai download`) and the registry (`sdhost models scan`).
    models_dir: str = ""  # empty: <data.dir>/models
    # The folder of each kind of model: relative to models_dir, or absolute (an A1111 or
    # ComfyUI install's own folders). Kinds left out keep these defaults.
    folders: dict[str, str] = {
        "checkpoint": "checkpoints",
        "lora": "loras",
        "vae": "vae",
        "embedding": "embeddings",
        "controlnet": "controlnet",
        "upscaler": "upscale_models",
        "other": "other",
    }
    download_concurrency: int = Field(2, ge=1)  # files downloading at once
    download_attempts: int = Field(8, ge=1)  # tries in a row without progress before failing
    on_name_clash: Literal["suffix", "refuse"] = "suffix"  # a different file has the name
    hash_mismatch: Literal["fail", "keep"] = "fail"  # the bytes differ from Civitai's SHA256
    # No model file over this many GiB is downloaded (nor more bytes than Civitai lists).
    max_download_gb: float = Field(20, gt=0)
    # Hosts /civitai shows pictures from (each hop through the /img2img address guard: public
    # addresses only). An IP address listed here may be private (a local mirror, a test).
    image_hosts: list[str] = ["image.civitai.com", "imagecache.civitai.com"]


class AdminConfig(_Section):
    # "platform:user_id" of people allowed to run admin commands from a chat
    users: list[str] = []


class LimitsConfig(_Section):
    # Commands that cost no credits but cost the operator (a Civitai lookup: an API call and
    # up to five picture fetches and decodes), per person per minute; 0: no limit. Admins
    # are not limited.
    free_commands_per_minute: int = Field(10, ge=0)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class Config(_Section):
    data: DataConfig = DataConfig()
    database: DatabaseConfig = DatabaseConfig()
    credits: CreditsConfig = CreditsConfig()
    queue: QueueConfig = QueueConfig()
    images: ImagesConfig = ImagesConfig()
    providers: ProvidersConfig = ProvidersConfig()
    console: ConsoleConfig = ConsoleConfig()
    telegram: TelegramConfig = TelegramConfig()
    discord: DiscordConfig = DiscordConfig()
    civitai: CivitaiConfig = CivitaiConfig()
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data.dir / 'sdhost.db'}"

    def secrets(self) -> set[str]:
        """Every secret value this config holds, for the logs to leave out: each field named
        like a secret (tokens, keys, secrets, passwords, in any section and in lists of
        keys), the Telegram webhook secret even when derived, and the database password."""
        found: set[str] = set()
        _collect_secrets(self, found)
        if self.telegram.token:
            found.add(self.telegram.effective_webhook_secret)
        from sqlalchemy.engine import make_url

        try:
            password = make_url(self.database_url).password
        except Exception:  # not a URL SQLAlchemy reads: the engine will say so
            password = None
        if password:
            found.add(str(password))
        # AI Horde's anonymous key is public (and ten zeros would blank out numbers in logs).
        return {s for s in found if s and s != ANON_HORDE_KEY}


# Field names whose values are secrets, wherever they appear in the config tree.
SECRET_FIELDS = frozenset(
    {"token", "secret", "key", "api_key", "webhook_secret", "password", "access_key", "secret_key"}
)


def _collect_secrets(node: Any, found: set[str]) -> None:
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            if name in SECRET_FIELDS and isinstance(value, str):
                found.add(value)
            elif name == "headers" and isinstance(value, dict):
                for header in value.values():  # "Bearer abc": the whole and the token
                    found.add(str(header))
                    found.add(str(header).split()[-1] if str(header).split() else "")
            else:
                _collect_secrets(value, found)
    elif isinstance(node, list | tuple):
        for item in node:
            _collect_secrets(item, found)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_FIELDS and isinstance(value, str):
                found.add(value)
            else:
                _collect_secrets(value, found)


class ConfigError(Exception):
    """A config file problem, phrased as 'which key is wrong and why'."""


ENV_PREFIX = "SDHOST_"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _coerce_env(value)
    return out


def _coerce_env(value: str) -> Any:
    # TOML-parse the value so numbers, booleans and lists work; plain strings stay strings.
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load and validate; raise ConfigError naming the offending key."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    raw = _merge(raw, _env_overrides(dict(os.environ if environ is None else environ)))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling against config.example.toml)"
            lines.append(f"{key}: {msg}")
        where = f"{path}: " if path else ""
        raise ConfigError(where + "; ".join(lines)) from None
