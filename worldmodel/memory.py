"""Temp-LoRA: an episode's memory stored in a LoRA on the UNet (paper Sec. 3.2, Alg. 1a).

After each generated chunk i, the LoRA alone takes ``steps`` Adam steps on a window
built from the clean latents just generated:

- ``local`` (default, Eq. 3): z' = input context (+) new chunk on the frame axis, all of
  it noised at one random t, no clean conditioning and no text, loss on every frame.
- ``original`` (Temp-LoRA for text): the input context stays clean as conditioning and
  only the new chunk is noised and scored.
- ``global``: like ``local`` but the window is drawn at random from the whole sequence
  generated so far.

Generation runs inside ``merged()``: the adapter is folded into the base weights for the
sampler's many UNet calls (LoRA matmuls of rank 32 on 48-wide layers cost more than the
layers themselves) and the base weights are copied back afterwards, exactly.

The adapter carries from chunk to chunk and ``reset()`` clears it for a new episode (B
= 0 gives exactly the base model). The base weights never change: only adapter
tensors are handed to the optimizer. A step whose loss or gradient is not finite is
undone (adapter and optimizer restored) and logged.

``reverse`` also trains every step on the window played backwards (one batch of two). A
memory trained only forwards learns the first phase as motion and pulls a return along
it, away from where it came from; played backwards, the same chunks show the way back
(a static world looks the same walked either way). Measured (docs/results/README.md): on the
retrace return it takes back about a third of what the forward-only memory costs, not all.

``crop`` > 0 trains each step on a random crop x crop square of the window's latents
(the same square in every frame) instead of the whole frame: the adapter's weights
are shared across positions, and a step's cost falls with the area (measured in
``checkpoints/README.md``), which is what keeps the memory inside its time budget.

Target modules: the temporal attention projections (``transformer_in`` and every
``temp_attentions`` block); ``spatial+temporal`` adds the spatial attention;
``temporal-decoder`` keeps only those of the mid block and the up path, so a step's
backward pass stops there instead of running through the whole UNet (cheaper steps).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from worldmodel.model import VideoWorldModel

ADAPTER = "temp_lora"
TARGETS = {
    "temporal": r".*(temp_attentions|transformer_in).*\.(to_q|to_k|to_v|to_out\.0)",
    "spatial+temporal": r".*(attentions|transformer_in).*\.(to_q|to_k|to_v|to_out\.0)",
    "temporal-decoder": r".*(mid_block|up_blocks).*temp_attentions.*\.(to_q|to_k|to_v|to_out\.0)",
}
VARIANTS = ("local", "original", "global")
MEMORY_MODES = ("none", "anchor-frame", "temp-lora")

log = logging.getLogger(__name__)


class EpisodeMemoryError(ValueError):
    pass


@dataclass
class MemoryConfig:
    rank: int = 32
    alpha: float = 32.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    steps: int = 1
    variant: str = "local"
    targets: str = "temporal"
    crop: int = 0
    reverse: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise EpisodeMemoryError(f"unknown Temp-LoRA variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.targets not in TARGETS:
            raise EpisodeMemoryError(f"unknown Temp-LoRA targets {self.targets!r}; choose one of {', '.join(TARGETS)}")
        if self.steps < 0 or self.rank < 1 or self.crop < 0:
            raise EpisodeMemoryError(f"Temp-LoRA needs steps >= 0, rank >= 1 and crop >= 0, got {self.steps}, "
                                     f"{self.rank}, {self.crop}")

    @classmethod
    def for_model(cls, model: VideoWorldModel, **overrides) -> "MemoryConfig":
        """``model``'s own Temp-LoRA settings (its config's ``temp_lora``: for a slow-fast
        finetuned base, the memory it learned to read), then the defaults; ``overrides``
        whose value is not None win."""
        values = {k: v for k, v in model.config.temp_lora.items() if k != "seed"}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("betas"), list):
            values["betas"] = tuple(values["betas"])
        try:
            return cls(**values)
        except TypeError as error:
            raise EpisodeMemoryError(f"bad Temp-LoRA settings {values}: {error}") from None

    def to_dict(self) -> dict:
        """The settings a world model's config stores (the per-episode seed is not one of them)."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}


def _own(name: str) -> str:
    return f"the world model's own, else {getattr(MemoryConfig, name)}"


@dataclass
class MemoryOverrides:
    """The Temp-LoRA settings a job (plan, evaluate, finetune) may override on the command line;
    None keeps the world model's own (see ``MemoryConfig.for_model``)."""
    memory_steps: int | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": "Adam steps per chunk", "default_text": _own("steps")})
    memory_lr: float | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": "learning rate", "default_text": _own("lr")})
    memory_crop: int | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": "side of the random latent square each step trains on, 0 = whole frames",
        "default_text": _own("crop")})
    memory_variant: str | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": " | ".join(VARIANTS), "default_text": _own("variant")})
    memory_reverse: bool | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": "also train on each window played backwards: true | false",
        "default_text": _own("reverse")})
    memory_targets: str | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": f"layers the adapter is on: {' | '.join(TARGETS)}",
        "default_text": _own("targets")})

    def __post_init__(self) -> None:
        if self.memory_variant is not None and self.memory_variant not in VARIANTS:
            raise EpisodeMemoryError(f"--memory-variant must be one of {', '.join(VARIANTS)}, "
                                     f"got {self.memory_variant!r}")
        if self.memory_targets is not None and self.memory_targets not in TARGETS:
            raise EpisodeMemoryError(f"--memory-targets must be one of {', '.join(TARGETS)}, "
                                     f"got {self.memory_targets!r}")
        for name in ("memory_steps", "memory_crop"):
            if (getattr(self, name) or 0) < 0:
                raise EpisodeMemoryError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        getattr(super(), "__post_init__", lambda: None)()  # the next mixin's checks, if any

    def memory_options(self) -> dict:
        """These fields by name, to hand on to another job's config."""
        return {f.name: getattr(self, f.name) for f in fields(MemoryOverrides)}

    def memory_config(self, model: VideoWorldModel, **more) -> MemoryConfig:
        """``model``'s Temp-LoRA settings with these overrides (and ``more``) applied."""
        overrides = {name.removeprefix("memory_"): value for name, value in self.memory_options().items()}
        return MemoryConfig.for_model(model, **overrides, **more)


def inject(model: VideoWorldModel, config: MemoryConfig) -> None:
    """Adds the adapter to the model's UNet once; later calls reuse it (its weights are set by
    ``EpisodeMemory.reset``), so they must ask for the same adapter shape."""
    def shape(c: MemoryConfig) -> tuple:
        return c.rank, c.alpha, c.targets

    def described(c: MemoryConfig) -> str:
        return f"rank={c.rank!r}, alpha={c.alpha!r}, targets={c.targets!r}"

    injected = getattr(model.unet, "_temp_lora_config", None)
    if injected is not None:
        # compared as values, not as text: alpha 32 from a YAML file is the same adapter as 32.0
        if shape(injected) != shape(config):
            raise EpisodeMemoryError(f"this model already carries a Temp-LoRA adapter with {described(injected)}; "
                                     f"a memory with {described(config)} needs a fresh model "
                                     "(VideoWorldModel.from_pretrained)")
        return
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=TARGETS[config.targets],
                      lora_dropout=0.0, init_lora_weights=True)
    # peft freezes every other parameter; the base keeps the caller's flags instead, because a frozen
    # weight sends torch's matmul down a slower unfolded path even under no_grad (the temporal
    # transformers' proj_in on permuted input: +4 % a sampled chunk).
    flags = [(p, p.requires_grad) for p in model.unet.parameters()]
    with torch.random.fork_rng():  # the caller's RNG stays where it was
        inject_adapter_in_model(lora, model.unet, adapter_name=ADAPTER)
    for p, flag in flags:
        p.requires_grad_(flag)
    model.unet._temp_lora_config = config


def adapter_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if f".{ADAPTER}." in n or n.endswith(f".{ADAPTER}")]


def base_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" not in n]


def finite(tensors: list[torch.Tensor]) -> bool:
    """No NaN or inf in ``tensors``, nor values so large that their norm overflows (one fused check)."""
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors)))


class EpisodeMemory:
    def __init__(self, model: VideoWorldModel, config: MemoryConfig | None = None):
        self.model = model
        self.config = config or MemoryConfig()
        size, multiple = model.config.latent_size, model.config.latent_multiple
        if self.config.crop and (self.config.crop > size or self.config.crop % multiple):
            raise EpisodeMemoryError(f"Temp-LoRA crop {self.config.crop} must be a multiple of {multiple} (the "
                                     f"UNet's downsampling) and at most the latent size {size}; "
                                     "0 trains on whole frames")
        inject(model, self.config)
        self.params = adapter_parameters(model.unet)
        self.base_params = base_parameters(model.unet)
        # Dropout layers are the only ones whose output train mode changes in this UNet (no batch norm);
        # switching just them spares the ~12 ms a step of walking its ~900 modules twice.
        self.dropouts = [m for m in model.unet.modules() if isinstance(m, torch.nn.Dropout)]
        self.wrapped = [(parent, name, child) for parent in model.unet.modules()
                        for name, child in parent.named_children()
                        if isinstance(child, LoraLayer) and ADAPTER in child.lora_A]
        self.history: torch.Tensor | None = None
        self.losses: list[float] = []
        self.rollbacks = 0
        self.reset()

    def reset(self) -> None:
        """A fresh episode: a zero-effect adapter (B = 0, A drawn from the memory's seed, so an
        episode does not depend on what earlier memories on this model learned), new optimizer."""
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            for _, _, layer in self.wrapped:
                layer.reset_lora_parameters(ADAPTER, init_lora_weights=True)
        self.optimizer = torch.optim.Adam(self.params, lr=self.config.lr, betas=self.config.betas,
                                          weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.history = None
        self.losses = []
        self.rollbacks = 0

    @contextlib.contextmanager
    def merged(self):
        """The adapter folded into the base weights while the block runs (for sampling).

        The merged base layers also stand in for their peft wrappers: a wrapper's Python
        forward, run for 40 layers at every sampler step, cost ~3 % of a chunk."""
        saved = [layer.get_base_layer().weight.detach().clone() for _, _, layer in self.wrapped]
        for parent, name, layer in self.wrapped:
            layer.merge(adapter_names=[ADAPTER])
            setattr(parent, name, layer.get_base_layer())
        try:
            yield
        finally:
            with torch.no_grad():
                for (parent, name, layer), weight in zip(self.wrapped, saved):
                    setattr(parent, name, layer)
                    layer.unmerge()
                    layer.get_base_layer().weight.copy_(weight)  # unmerge's subtraction leaves rounding

    # --- fast learning ----------------------------------------------------------------
    def training_window(self, previous: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The latents one update trains on, and how many leading frames are clean context."""
        cfg = self.model.config
        if self.config.variant == "original":
            return torch.cat([previous, new], dim=2), previous.shape[2]
        if self.config.variant == "global" and self.history is not None and self.history.shape[2] > cfg.window:
            last_start = self.history.shape[2] - cfg.window
            start = int(torch.randint(0, last_start + 1, (1,), generator=self.generator))
            return self.history[:, :, start:start + cfg.window], 0
        return torch.cat([previous, new], dim=2)[:, :, -cfg.window:], 0

    def crop(self, window: torch.Tensor) -> torch.Tensor:
        """One step's square of the window (the whole window when ``crop`` is 0)."""
        size, crop = window.shape[-1], self.config.crop
        if not crop or crop >= size:
            return window
        top, left = (int(i) for i in torch.randint(0, size - crop + 1, (2,), generator=self.generator))
        return window[..., top:top + crop, left:left + crop]

    def batch(self, window: torch.Tensor) -> torch.Tensor:
        """One step's training batch: the (cropped) window, and with ``reverse`` the same played backwards."""
        window = self.crop(window)
        return torch.cat([window, window.flip(2)]) if self.config.reverse else window

    def _loss(self, window: torch.Tensor, clean_frames: int) -> torch.Tensor:
        empty = self.model.empty_text(window.shape[0])
        if clean_frames:
            context, context_len = self.model.context_slots(window[:, :, :clean_frames])
            target = window[:, :, clean_frames:]
            return self.model.training_loss(context, context_len, target, empty, self.generator)
        return self.model.whole_window_loss(window, empty, self.generator)

    @torch.enable_grad()  # generation loops run under no_grad; fast learning must still backprop
    def update(self, previous: torch.Tensor, new: torch.Tensor) -> list[float]:
        """Fast learning after one chunk: ``steps`` Adam steps on the adapter only."""
        sequence = torch.cat([previous, new], dim=2) if self.history is None else torch.cat([self.history, new], dim=2)
        self.history = sequence.detach()
        window, clean = self.training_window(previous.detach(), new.detach())
        dropout_flags = [m.training for m in self.dropouts]
        for m in self.dropouts:
            m.training = True
        base_flags = [p.requires_grad for p in self.base_params]
        for p in self.base_params:
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        losses = []
        # The UNet's temporal convolutions use dropout in train mode; seeding it from the
        # memory's generator makes an episode's memory a function of its seed alone.
        dropout_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        try:
            with torch.random.fork_rng():
                torch.manual_seed(dropout_seed)
                for _ in range(self.config.steps):
                    saved = [p.detach().clone() for p in self.params]
                    saved_optimizer = {p: {k: v.clone() for k, v in state.items()}
                                       for p, state in self.optimizer.state.items()}
                    loss = self._loss(self.batch(window), clean)
                    self.optimizer.zero_grad()
                    loss.backward()
                    grads = [p.grad for p in self.params if p.grad is not None]
                    if not torch.isfinite(loss) or not finite(grads):
                        self._rollback(saved, saved_optimizer, loss)
                        continue
                    self.optimizer.step()
                    if not finite(self.params):
                        self._rollback(saved, saved_optimizer, loss)
                        continue
                    losses.append(loss.item())
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            for p, flag in zip(self.base_params, base_flags):
                p.requires_grad_(flag)
            for m, flag in zip(self.dropouts, dropout_flags):
                m.training = flag
        self.losses += losses
        return losses

    def _rollback(self, saved: list[torch.Tensor], optimizer_state: dict, loss: torch.Tensor) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, saved):
                p.copy_(value)
        self.optimizer.state.clear()
        self.optimizer.state.update(optimizer_state)
        self.rollbacks += 1
        log.warning("Temp-LoRA step rolled back: non-finite loss or gradient (loss=%s)", float(loss))

    # --- persistence --------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(self.model.unet, adapter_name=ADAPTER)
        return {k: v.detach().clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.model.unet, state, adapter_name=ADAPTER)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise EpisodeMemoryError(f"memory file does not fit this world model (unexpected: {unexpected[:3]})")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"rank": str(self.config.rank), "targets": self.config.targets,
                            "variant": self.config.variant})
        return path

    def load(self, path: str | Path) -> None:
        try:
            self.load_state_dict(load_file(str(path)))
        except EpisodeMemoryError:
            raise
        except Exception as error:  # missing, corrupt, or made for another model
            raise EpisodeMemoryError(f"cannot load episode memory {path}: {error}") from None
