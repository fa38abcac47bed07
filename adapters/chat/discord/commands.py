"""The slash commands and the Remix message command: one method per command.

Why a plain class and not an ``app_commands.Group`` subclass: a Group is itself one slash
command whose methods become its subcommands, so people would have to type
``/sdhost imagine`` instead of ``/imagine``. The names people type stay top-level, so each
method is registered on its own (``register``) as an ``app_commands.Command`` whose callback
is the bound method: discord.py binds the command to this object and passes it as ``self``
(to the autocomplete methods too). The decorators on the methods (describe, rename,
choices, permissions) are read from them as from any callback; what is only known at run
time (the providers' names, whether /civitai is installed) is added in ``register``. The
Remix message command is a closure there: discord.py refuses context menus defined in a
class.

Every command turns into the text a person would type at the console (options written
with ``bot.grammar.format_flags``) and goes through the adapter's ``_command``, so all
platforms share one command grammar. Commands that make pictures check their input first
(``options``): a mistake is answered ephemerally before anything is shown in the channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from adapters.chat.discord.files import _is_picture
from adapters.chat.discord.modals import OpenBoxes, _PromptModal, box_id
from adapters.chat.discord.options import (
    BATCH_MAX,
    LORAS_MAX,
    NAME_MAX,
    NEGATIVE_MAX,
    PROMPT_MAX,
    SETTING_NEGATIVE_MAX,
    STRENGTH_MAX,
    check_model,
    check_text,
    check_uploads,
    read_options,
    read_strength_field,
    split_loras,
)
from bot.errors import BadInput, UserError
from bot.grammar import format_flags
from bot.i18n import t
from bot.params import GenerationParams
from bot.status import JOB_ACTIVE
from bot.text import clip

if TYPE_CHECKING:
    from adapters.chat.discord.adapter import DiscordAdapter

L = app_commands.locale_str

ASPECTS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21"]
CHOICES_MAX = 25  # Discord's most autocomplete results
CHOICE_MAX = 100  # characters in a choice's name and in its (string) value


def _text(command: str, prompt: str, options: GenerationParams) -> str:
    """The command as typed at the console: the prompt as given (flags in it work too), then
    the options as flags (``format_flags`` quotes and escapes them so they read back as
    given)."""
    return " ".join(part for part in (command, prompt, format_flags(options)) if part)


admin = app_commands.default_permissions(administrator=True)


class SlashCommands:
    """What people type on Discord, each command a method taking the interaction first."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        self.adapter = adapter
        self.app = adapter.app
        self.boxes = OpenBoxes()

    def register(self, tree: app_commands.CommandTree[Any]) -> None:
        """Add every command to ``tree`` under the name people type."""
        providers = list(self.app.providers)

        def add(name: str, description: str, callback: Any) -> app_commands.Command[Any, ..., Any]:
            command: app_commands.Command[Any, ..., Any] = app_commands.Command(
                name=L(name), description=L(description), callback=callback
            )
            return command

        imagine = add("imagine", "Make pictures from a prompt", self.imagine)
        imagine = app_commands.choices(
            provider=[app_commands.Choice(name=p, value=p) for p in providers]
            or [app_commands.Choice(name="none", value="none")],
        )(imagine)
        tree.add_command(imagine)
        tree.add_command(add("img2img", "Redraw a picture", self.img2img))
        tree.add_command(add("batch", "Several prompts at once, one per line", self.batch))
        tree.add_command(add("credits", "Your balance and the prices", self.credits))
        tree.add_command(add("jobs", "Your recent jobs", self.jobs))
        tree.add_command(add("models", "Providers, models and prices", self.models))
        tree.add_command(add("help", "What this bot does", self.help))
        tree.add_command(add("job", "One job in detail", self.job))
        tree.add_command(add("cancel", "Cancel a job", self.cancel))
        tree.add_command(add("retry", "Run a failed job again", self.retry))
        tree.add_command(add("lang", "Reply language", self.lang))
        tree.add_command(
            add("settings", "Your defaults: model, aspect, negative prompt", self.settings)
        )
        tree.add_command(add("grant", "Give or take credits (admins)", self.grant))
        tree.add_command(add("ban", "Stop someone using the bot (admins)", self.ban))
        tree.add_command(add("unban", "Let someone use the bot again (admins)", self.unban))
        tree.add_command(
            add("stats", "Queue, jobs and credits of the last day (admins)", self.stats)
        )
        if "civitai" in self.app.commands.extensions:
            tree.add_command(add("civitai", "Look up Civitai models and images", self.civitai))

        async def remix(interaction: discord.Interaction[Any], message: discord.Message) -> None:
            await self.remix(interaction, message)

        tree.add_command(app_commands.ContextMenu(name=L("Remix"), callback=remix))

    # --- autocomplete ----------------------------------------------------------------------

    async def _model_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        names = []
        for pname, provider in self.app.providers.items():
            for mi in provider.capabilities().models:
                names.append(f"{pname}:{mi.name}")
        current = current.lower()
        return [app_commands.Choice(name=n, value=n) for n in names if current in n][:25]

    def _listed(self, kind: str, interaction: discord.Interaction[Any]) -> list[str]:
        """The names the providers list under ``kind`` (``Capabilities.lists``: "loras",
        "samplers", ...), asked afresh each time so new files show up; only the provider
        the person picked (the provider option, or the model's ``provider:`` prefix)."""
        namespace = interaction.namespace
        chosen = getattr(namespace, "provider", None) or None
        model = getattr(namespace, "model", None)
        if not chosen and isinstance(model, str) and ":" in model:
            prefix = model.partition(":")[0]
            chosen = prefix if prefix in self.app.providers else None
        names: dict[str, None] = {}
        for pname, provider in self.app.providers.items():
            if chosen and pname != chosen:
                continue
            for name in provider.capabilities().lists.get(kind, ()):
                if name and len(name) <= CHOICE_MAX:
                    names.setdefault(name)
        return list(names)

    @staticmethod
    def _matching(names: list[str], typed: str) -> list[str]:
        """Names starting with what is typed first, then names containing it."""
        typed = typed.strip().lower()
        starts = [n for n in names if n.lower().startswith(typed)]
        within = [n for n in names if typed in n.lower() and n not in starts]
        return starts + within

    def _name_choices(
        self, kind: str, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        found = self._matching(self._listed(kind, interaction), current)
        return [app_commands.Choice(name=n, value=n) for n in found[:CHOICES_MAX]]

    async def _sampler_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return self._name_choices("samplers", interaction, current)

    async def _scheduler_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return self._name_choices("schedulers", interaction, current)

    async def _vae_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return self._name_choices("vaes", interaction, current)

    async def _lora_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """Completes the last item of the list typed so far ("film_grain:0.8, det" offers
        "film_grain:0.8, detail_tweaker"), leaving the earlier ones as typed; a weight
        typed after the name being completed is kept."""
        head, comma, last = current.rpartition(",")
        done = split_loras(head) if comma else []
        prefix = ", ".join(done) + ", " if done else ""
        chosen = {item.rpartition(":")[0] or item for item in done}
        names = [n for n in self._listed("loras", interaction) if n not in chosen]
        typed, suffix = last.strip(), ""
        found = self._matching(names, typed)
        if not found and ":" in typed:
            typed, _, weight = typed.rpartition(":")
            suffix = ":" + weight.strip()
            found = self._matching(names, typed)
        out = []
        for name in found:
            value = prefix + name + suffix
            if len(value) <= CHOICE_MAX:
                out.append(app_commands.Choice(name=clip(value, CHOICE_MAX), value=value))
        return out[:CHOICES_MAX]

    async def _my_jobs(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[int]]:
        views = await self.app.jobs.jobs(self.adapter._user(interaction.user), limit=25)
        out = []
        for v in views:
            if v.status in JOB_ACTIVE and current in str(v.id):
                prompt = str(v.params.get("prompt", ""))[:60]
                out.append(app_commands.Choice(name=f"#{v.id} {v.status} {prompt}", value=v.id))
        return out[:25]

    # --- making pictures -------------------------------------------------------------------

    @app_commands.describe(
        prompt=L("What to draw; flags like --ar 16:9 work too"),
        negative=L("What to leave out"),
        aspect=L("Aspect ratio"),
        seed=L("Seed (-1: random)"),
        steps=L("Sampling steps"),
        cfg=L("Prompt guidance (CFG)"),
        count=L("Pictures, 1-4"),
        model=L("Model (see /models)"),
        provider=L("Provider"),
        sampler=L("Sampler (your own GPUs list theirs)"),
        lora=L("LoRAs: name or name:weight, several comma-separated"),
        vae=L("VAE (your own GPUs)"),
        scheduler=L("Noise schedule, e.g. karras (your own GPUs)"),
        hires=L("Hires fix: a second pass that enlarges and sharpens"),
    )
    @app_commands.rename(
        prompt=L("prompt"),
        negative=L("negative"),
        aspect=L("aspect"),
        seed=L("seed"),
        steps=L("steps"),
        cfg=L("cfg"),
        count=L("count"),
        model=L("model"),
        provider=L("provider"),
        sampler=L("sampler"),
        lora=L("lora"),
        vae=L("vae"),
        scheduler=L("scheduler"),
        hires=L("hires"),
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    @app_commands.autocomplete(  # type: ignore[type-var]
        model=_model_choices,
        sampler=_sampler_choices,
        lora=_lora_choices,
        vae=_vae_choices,
        scheduler=_scheduler_choices,
    )
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, PROMPT_MAX],
        negative: app_commands.Range[str, 1, NEGATIVE_MAX] | None = None,
        aspect: str | None = None,
        seed: app_commands.Range[int, -1, 4294967295] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: str | None = None,
        provider: str | None = None,
        sampler: app_commands.Range[str, 1, NAME_MAX] | None = None,
        lora: app_commands.Range[str, 1, LORAS_MAX] | None = None,
        vae: app_commands.Range[str, 1, NAME_MAX] | None = None,
        scheduler: app_commands.Range[str, 1, NAME_MAX] | None = None,
        hires: bool | None = None,
    ) -> None:
        try:
            options = read_options(
                {
                    "negative": negative,
                    "aspect": aspect,
                    "seed": seed,
                    "steps": steps,
                    "cfg": cfg,
                    "count": count,
                    "model": model,
                    "provider": provider,
                    "sampler": sampler,
                    "lora": lora,
                    "vae": vae,
                    "scheduler": scheduler,
                    "hires": hires,
                }
            )
            text = _text("/imagine", prompt, options)
            check_text(text, empty=BadInput.of("dc.opt.prompt_empty"))
            check_model(self.app.jobs.router, text)
        except UserError as err:
            await self.adapter._refuse(interaction, err)
            return
        await self.adapter._command(interaction, text)

    @app_commands.describe(
        image=L("The picture to redraw"),
        prompt=L("What to draw; flags like --ar 16:9 work too"),
        strength=L("How much may change, 0-1"),
        image2=L("Another picture, for models that take several (FLUX.2)"),
        image3=L("Another picture, for models that take several (FLUX.2)"),
        image4=L("Another picture, for models that take several (FLUX.2)"),
    )
    @app_commands.rename(
        image=L("image"),
        prompt=L("prompt"),
        strength=L("strength"),
        image2=L("image2"),
        image3=L("image3"),
        image4=L("image4"),
    )
    async def img2img(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, PROMPT_MAX],
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
    ) -> None:
        try:
            check_uploads(
                {"image": image, "image2": image2, "image3": image3, "image4": image4},
                self.app.config.images.max_input_bytes,
            )
            text = _text("/img2img", prompt, read_options({"strength": strength}))
            check_text(text, empty=BadInput.of("dc.opt.prompt_empty"))
        except UserError as err:
            await self.adapter._refuse(interaction, err)
            return
        more = [a for a in (image2, image3, image4) if a is not None]
        await self.adapter._command(interaction, text, attachment=image, more_attachments=more)

    async def batch(self, interaction: discord.Interaction[Any]) -> None:
        lang = await self.adapter._lang(interaction)
        label = t(lang, "dc.batch.prompts")[:45]
        field: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=label,
            style=discord.TextStyle.paragraph,
            max_length=BATCH_MAX,
            custom_id="prompts",
        )

        async def done(inter: discord.Interaction[Any], values: list[str]) -> None:
            text = "/batch " + values[0]
            try:
                check_text(text, empty=BadInput.of("dc.batch.empty", field=label))
                check_model(self.app.jobs.router, text)
            except UserError as err:
                await self.adapter._refuse(inter, err)
                return
            await self.adapter._command(inter, text)

        box = box_id("batch", interaction)
        await interaction.response.send_modal(
            _PromptModal(box, t(lang, "dc.batch.title"), [field], done)
        )
        self.boxes.add(box)

    async def remix(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """Remix on a message: a box asks what its picture should become."""
        adapter = self.adapter
        lang = await adapter._lang(interaction)
        if not adapter._allowed(interaction):
            await interaction.response.send_message(t(lang, "dc.not_allowed"), ephemeral=True)
            return
        pictures = [a for a in message.attachments if _is_picture(a)]
        if not pictures:
            await interaction.response.send_message(t(lang, "dc.no_picture"), ephemeral=True)
            return
        limit = self.app.config.images.max_input_bytes
        if pictures[0].size > limit:
            too_big = UserError.of(
                "tg.too_big_input", mb=pictures[0].size / 1024 / 1024, limit=limit / 1024 / 1024
            )
            await adapter._refuse(interaction, too_big)
            return
        channel_id, message_id = message.channel.id, message.id
        prompt_label = t(lang, "dc.remix.prompt")[:45]
        strength_label = t(lang, "dc.remix.strength")[:45]
        prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=prompt_label, max_length=PROMPT_MAX, custom_id="prompt"
        )
        strength: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=strength_label,
            required=False,
            default="0.6",
            max_length=STRENGTH_MAX,
            custom_id="strength",
        )

        async def done(inter: discord.Interaction[Any], values: list[str]) -> None:
            empty = BadInput.of("dc.remix.prompt_empty", field=prompt_label)
            try:
                if not values[0].strip():
                    raise empty
                options = GenerationParams(strength=read_strength_field(values[1], strength_label))
                text = _text("/img2img", values[0], options)
                check_text(text, empty=empty)
            except UserError as err:
                await adapter._refuse(inter, err)
                return
            if adapter._closing:
                return
            # private until the core accepts the job (the adapter's _command)
            await inter.response.defer(thinking=True, ephemeral=True)
            try:
                # Attachment URLs expire: read the message again for fresh ones.
                channel = adapter.client.get_partial_messageable(channel_id)
                fresh = await channel.fetch_message(message_id)
                picture = next(a for a in fresh.attachments if _is_picture(a))
                data = await adapter._read_attachment(picture)
            except (discord.HTTPException, StopIteration):
                await adapter._respond(inter, t(await adapter._lang(inter), "dc.picture_gone"))
                return
            except UserError as exc:
                await adapter._respond(inter, exc.render(await adapter._lang(inter)))
                return
            await adapter._command(inter, text, image=data)

        box = box_id("remix", interaction)
        await interaction.response.send_modal(
            _PromptModal(box, t(lang, "dc.remix.title"), [prompt, strength], done)
        )
        self.boxes.add(box)

    async def stale_box(self, interaction: discord.Interaction[Any]) -> None:
        """A submit for a box this process does not know (discord.py drops it unanswered):
        ask the person to open it again."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if not OpenBoxes.ours(custom_id) or custom_id in self.boxes or self.adapter._closing:
            return
        lang = await self.adapter._lang(interaction)
        await interaction.response.send_message(t(lang, "dc.box.expired"), ephemeral=True)

    # --- asking about things ---------------------------------------------------------------

    async def credits(self, interaction: discord.Interaction[Any]) -> None:
        await self.adapter._command(interaction, "/credits")

    async def jobs(self, interaction: discord.Interaction[Any]) -> None:
        await self.adapter._command(interaction, "/jobs")

    async def models(self, interaction: discord.Interaction[Any]) -> None:
        await self.adapter._command(interaction, "/models")

    async def help(self, interaction: discord.Interaction[Any]) -> None:
        await self.adapter._command(interaction, "/help")

    @app_commands.describe(id=L("Job number"))
    async def job(self, interaction: discord.Interaction[Any], id: int) -> None:
        await self.adapter._command(interaction, f"/job {id}")

    @app_commands.describe(id=L("Job number"))
    @app_commands.autocomplete(id=_my_jobs)  # type: ignore[type-var]
    async def cancel(self, interaction: discord.Interaction[Any], id: int) -> None:
        await self.adapter._command(interaction, f"/cancel {id}")

    @app_commands.describe(id=L("Job number"))
    async def retry(self, interaction: discord.Interaction[Any], id: int) -> None:
        await self.adapter._command(interaction, f"/retry {id}")

    # --- the person's choices --------------------------------------------------------------

    @app_commands.rename(language=L("language"))
    @app_commands.choices(
        language=[
            app_commands.Choice(name="English", value="en"),
            app_commands.Choice(name="简体中文", value="zh"),
            app_commands.Choice(name="auto", value="auto"),
        ]
    )
    async def lang(self, interaction: discord.Interaction[Any], language: str) -> None:
        await self.adapter._command(interaction, f"/lang {language}")

    @app_commands.describe(
        model=L("Model (see /models)"),
        aspect=L("Aspect ratio"),
        negative=L("What to leave out"),
        clear=L("Forget all your defaults"),
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    @app_commands.autocomplete(model=_model_choices)  # type: ignore[type-var]
    async def settings(
        self,
        interaction: discord.Interaction[Any],
        model: str | None = None,
        aspect: str | None = None,
        negative: app_commands.Range[str, 1, SETTING_NEGATIVE_MAX] | None = None,
        clear: bool = False,
    ) -> None:
        texts = []
        if clear:
            texts.append("/settings clear")
        for key, value in (("model", model), ("aspect", aspect), ("negative", negative)):
            if value:
                texts.append(f"/settings {key} {value}")
        await self.adapter._command(interaction, texts or ["/settings"])

    # --- admins ----------------------------------------------------------------------------

    @app_commands.describe(user=L("Who"), amount=L("Credits (negative takes back)"), note=L("Why"))
    @admin
    async def grant(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User,
        amount: int,
        note: str | None = None,
    ) -> None:
        await self.adapter._command(
            interaction, f"/grant discord:{user.id} {amount} {note or ''}".strip()
        )

    @app_commands.describe(user=L("Who"))
    @admin
    async def ban(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        await self.adapter._command(interaction, f"/ban discord:{user.id}")

    @app_commands.describe(user=L("Who"))
    @admin
    async def unban(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        await self.adapter._command(interaction, f"/unban discord:{user.id}")

    @admin
    async def stats(self, interaction: discord.Interaction[Any]) -> None:
        await self.adapter._command(interaction, "/stats")

    # --- extensions ------------------------------------------------------------------------

    @app_commands.describe(query=L("models QUERY, model ID, images, image ID, use ID or hash HASH"))
    async def civitai(self, interaction: discord.Interaction[Any], query: str) -> None:
        await self.adapter._command(interaction, f"/civitai {query}")
