"""The one fine-tuning engine: DDPM epsilon-prediction training of a :class:`~advbench.model.Model`.

Attacks (full fine-tuning, LoRA, DreamBooth, textual inversion), defenses that simulate users (FreezeAsGuard)
and the tiny world's pretraining all train through a :class:`Trainer` (set up once, step, tear down) —
:func:`finetune` is a loop over one — so freezing, precision, seeding and timing mean the same everywhere. The loop follows diffusers' ``train_text_to_image.py``: encode images to
latents, add noise at a random timestep, predict the noise from the caption, MSE.

What is trained:
- by default every UNet tensor except the ``frozen`` names (plus the text encoder if
  ``cfg.train_text_encoder``); frozen tensors get ``requires_grad=False`` and are not in the optimizer, so
  they get no gradients and no optimizer state (freezing really saves memory and time);
- or exactly the ``trainable`` parameters (LoRA weights, an embedding row), still minus frozen UNet tensors.

Where the data comes from (``examples``):
- a ``list[Example]``: the engine draws batches of ``cfg.batch_size`` from seeded epoch permutations;
- or a batch function ``batches(step, generator) -> dict`` returning at least ``"pixel_values"``
  (B×3×H×W in [-1, 1]) and ``"captions"`` (list[str]) plus anything a custom ``loss_fn`` needs (DreamBooth's
  class images, a pretraining generator's fresh images). It must draw its randomness from ``generator``.

``loss_fn(model, batch, step) -> scalar`` replaces the default loss; ``batch["generator"]`` is the run's
seeded ``torch.Generator`` (use it for noise and timesteps so the run stays reproducible).
``callback(step, loss)`` is called after every optimizer step; returning ``True`` stops training early.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from advbench.errors import ConstraintError, DataError, ParamError
from advbench.interfaces import BudgetReached, Context, Example
from advbench.model import Model

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")

Batch = dict[str, Any]
BatchFn = Callable[[int, torch.Generator], Batch]
LossFn = Callable[[Model, Batch, int], torch.Tensor]


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run (validated on construction; bad values raise ParamError)."""

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    prompt_dropout: float = 0.0  # probability of training a caption as "" (keeps classifier-free guidance alive)
    mixed_precision: str = "no"  # accelerate's names; on CPU accelerate runs "fp16" in float32, "bf16" as bf16
    gradient_checkpointing: bool = False
    train_text_encoder: bool = False
    random_flip: bool = False  # off by default: faces and artworks are not mirror-symmetric classes

    def __post_init__(self):
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be positive or None, got {self.max_grad_norm}"),
            (self.lr_scheduler in LR_SCHEDULERS,
             f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}"),
            (self.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}"),
            (0.0 <= self.prompt_dropout < 1.0, f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}"),
            (self.mixed_precision in PRECISIONS,
             f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ParamError(message)


@dataclass
class FinetuneResult:
    """What a run measured. ``peak_memory_mb``: CUDA peak allocated, or on CPU the peak RSS growth."""

    losses: list[float]
    seconds: float
    seconds_per_step: float
    peak_memory_mb: float
    trainable_params: int
    trainable_tensors: int = 0
    optimizer_state_numel: int = 0  # elements held in optimizer state (0 for frozen tensors)
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)


def trainable_parameters(model: Model, frozen: Iterable[str] = (), train_text_encoder: bool = False
                         ) -> dict[str, torch.nn.Parameter]:
    """The default selection: ``unet.<name>`` for UNet tensors not in ``frozen``, plus ``text_encoder.<name>``."""
    frozen = set(frozen)
    names = {n for n, _ in model.unet.named_parameters()}
    unknown = sorted(frozen - names)
    if unknown:
        raise ConstraintError(f"the freeze mask names {len(unknown)} tensor(s) the UNet does not have (e.g. "
                              f"{unknown[0]!r}); it was made for a different model: re-run the defense on this one")
    out = {f"unet.{n}": p for n, p in model.unet.named_parameters() if n not in frozen}
    if train_text_encoder:
        out.update({f"text_encoder.{n}": p for n, p in model.text_encoder.named_parameters()})
    return out


def build_optimizer(params: list[torch.nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """Adam (the FreezeAsGuard paper's), AdamW or plain SGD over exactly ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def noised_latents(model: Model, pixel_values: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) of one DDPM training step: the noised latents of the images, their timesteps and what the
    UNet should predict there (the noise, or velocity/sample, per the scheduler), drawn from ``generator`` in the
    order :func:`diffusion_prediction` draws them. For losses that compare predictions on the same x_t under
    several conditionings (Dark Miner's circumvention)."""
    device = model.device
    with torch.no_grad():  # the VAE (if any) is never trained; pixel layouts need no gradient either
        latents = model.encode_images(pixel_values.to(device), generator=generator).float()
    # Noise and timesteps are drawn on the CPU from the run's generator, so CPU and GPU runs see the same draws.
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(device)
    # Forward diffusion: x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε.
    noisy = model.scheduler.add_noise(latents, noise, timesteps)
    kind = model.scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = model.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    return noisy, timesteps, target.float()


def diffusion_prediction(model: Model, pixel_values: torch.Tensor, captions: Sequence[str] | None,
                         generator: torch.Generator, hidden: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) in float32 of one DDPM training step: the UNet's prediction and the noise (or
    velocity/sample, per the scheduler) it should match. :func:`diffusion_loss` is their MSE; a loss of another
    shape (SOPHON's suppression) uses the same draws. ``hidden`` (B×L×D) conditions the UNet instead of the
    encoded ``captions``: a conditioning that is optimised directly (Dark Miner's mined embedding)."""
    noisy, timesteps, target = noised_latents(model, pixel_values, generator)
    if hidden is None:
        hidden = model.encode_prompts(list(captions))
    prediction = model.unet(noisy, timesteps, hidden.to(noisy.device)).sample
    return prediction.float(), target


def diffusion_loss(model: Model, pixel_values: torch.Tensor, captions: Sequence[str] | None,
                   generator: torch.Generator, reduction: str = "mean", hidden: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """DDPM loss: MSE between the UNet's prediction and the noise (or velocity/sample, per the scheduler).

    ``reduction="none"`` returns one loss per image (the mean over its elements) instead of the batch mean;
    ``hidden`` conditions on hidden states instead of ``captions`` (see :func:`diffusion_prediction`).
    """
    prediction, target = diffusion_prediction(model, pixel_values, captions, generator, hidden)
    if reduction == "none":
        return F.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)
    return F.mse_loss(prediction, target)


class SeededBatcher:
    """Batches drawn from seeded epoch permutations of one set of examples (a batch may span two epochs).

    The one batcher of the engine, the attacks and the defenses: ``draw(generator)`` takes its randomness from
    the run's generator only, and ``state_dict()`` / ``load_state_dict()`` carry the queue of the current epoch,
    so a run resumed from a saved training state draws exactly the batches an uninterrupted run would have.
    """

    def __init__(self, examples: list[Example], batch_size: int, resolution: int):
        from advbench.data import examples_to_tensor

        if not examples:
            raise DataError("fine-tuning got no training images; check that the class has images in the split")
        self.pixels = examples_to_tensor(examples, resolution)
        self.captions = [ex.text for ex in examples]
        self.batch_size = batch_size
        self.queue: list[int] = []

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        while len(self.queue) < self.batch_size:
            self.queue += torch.randperm(len(self.captions), generator=generator).tolist()
        idx, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size:]
        return self.pixels[idx], [self.captions[i] for i in idx]

    def __call__(self, step: int, generator: torch.Generator) -> Batch:
        pixels, captions = self.draw(generator)
        return {"pixel_values": pixels, "captions": captions}

    def state_dict(self) -> dict[str, Any]:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [int(i) for i in state["queue"]]


def _augment(batch: Batch, cfg: FinetuneConfig, generator: torch.Generator) -> Batch:
    captions = batch.get("captions")
    if cfg.prompt_dropout > 0 and captions is not None:
        # Unconditional training examples teach the empty-prompt branch that classifier-free guidance uses.
        drop = (torch.rand(len(captions), generator=generator) < cfg.prompt_dropout).tolist()
        batch["captions"] = ["" if d else c for c, d in zip(captions, drop)]
    pixels = batch.get("pixel_values")
    if cfg.random_flip and pixels is not None:
        flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
        batch["pixel_values"] = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    return batch


def _accelerator(mixed_precision: str, device: str):
    """A fresh accelerate ``Accelerator``.

    accelerate keeps one process-wide state that refuses a second precision, but consecutive runs here may
    differ (an fp32 simulated user, then a bf16 attack), so the state is reset before and after each run.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    return Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")


def _release_accelerator() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class Trainer:
    """One training set-up of a model, shared by :func:`finetune` and defenses' own loops (FreezeAsGuard's).

    ``with Trainer(model, cfg, ctx, frozen=..., trainable=...) as t:`` sets up once — a fresh accelerate
    session for ``ctx.device`` and ``cfg.mixed_precision``, the model on that device in float32, exactly the
    selected tensors with ``requires_grad`` (frozen tensors are leaves without it and stay out of the
    optimizer), train mode on the modules that train, gradient checkpointing if asked, the optimizer and LR
    schedule (``optimize=False``: none, for loops that update weights themselves), and the run's generator
    seeded from ``ctx.seed``. Then ``t.loss(batch)`` / ``t.step(batch)``; on exit every ``requires_grad`` flag
    and train mode is as before and the model is back on its device in float32.
    """

    def __init__(self, model: Model, cfg: FinetuneConfig, ctx: Context, frozen: Iterable[str] = (),
                 trainable: Iterable[torch.nn.Parameter] | None = None, optimize: bool = True):
        self.model, self.cfg, self.ctx, self.optimize = model, cfg, ctx, optimize
        frozen = set(frozen)
        default = trainable_parameters(model, frozen, cfg.train_text_encoder)  # also checks the frozen names
        if trainable is None:
            self.params = list(default.values())
        else:
            frozen_ids = {id(p) for n, p in model.unet.named_parameters() if n in frozen}
            self.params = [p for p in trainable if id(p) not in frozen_ids]
        if not self.params:
            raise ConstraintError("nothing to train: every selected tensor is frozen; lower the freezing ratio")
        self.accelerator = self.optimizer = self.schedule = self.generator = None
        self.device = ctx.device

    def __enter__(self) -> Trainer:
        model, cfg = self.model, self.cfg
        self._modules = list(model.components().values())
        self._flags = {id(p): p.requires_grad for m in self._modules for p in m.parameters()}
        self._modes = [m.training for m in self._modules]
        self._origin = model.device
        self._checkpointing = cfg.gradient_checkpointing and not model.unet.is_gradient_checkpointing
        self.accelerator = _accelerator(cfg.mixed_precision, self.ctx.device)
        self.device = str(self.accelerator.device)
        try:
            model.to(self.accelerator.device, torch.float32)  # trainable tensors in fp32; autocast does the rest
            for m in self._modules:
                m.requires_grad_(False)
            for p in self.params:
                p.requires_grad_(True)
            ids = {id(p) for p in self.params}
            for m in self._modules:
                m.train(any(id(p) in ids for p in m.parameters()))
            if self._checkpointing:
                model.unet.enable_gradient_checkpointing()
                if cfg.train_text_encoder:
                    model.text_encoder.gradient_checkpointing_enable()
            if self.optimize:
                from diffusers.optimization import get_scheduler

                optimizer = build_optimizer(self.params, cfg)
                schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                         num_training_steps=cfg.steps)
                self.optimizer, self.schedule = self.accelerator.prepare(optimizer, schedule)
            self.generator = torch.Generator().manual_seed(self.ctx.seed)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        model, cfg = self.model, self.cfg
        if self._checkpointing:
            model.unet.disable_gradient_checkpointing()
            if cfg.train_text_encoder:
                model.text_encoder.gradient_checkpointing_disable()
        for m, mode in zip(self._modules, self._modes):
            m.train(mode)
            for p in m.parameters():
                p.requires_grad_(self._flags[id(p)])
                p.grad = None
        model.to(self._origin, torch.float32)
        _release_accelerator()

    def loss(self, batch: Batch, loss_fn: LossFn | None = None, step: int = 0) -> torch.Tensor:
        """The training loss of ``batch`` under the session's autocast (default: :func:`diffusion_loss`)."""
        batch.setdefault("generator", self.generator)
        with self.accelerator.autocast():
            if loss_fn is not None:
                return loss_fn(self.model, batch, step)
            return diffusion_loss(self.model, batch["pixel_values"], batch["captions"], batch["generator"])

    def step(self, batch: Batch, loss_fn: LossFn | None = None, step: int = 0) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        loss = self.loss(batch, loss_fn, step)
        # Backward through the trainable tensors only; frozen ones are leaves without requires_grad.
        self.accelerator.backward(loss)
        if self.cfg.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def optimizer_state_numel(self) -> int:
        """Elements held in optimizer state (frozen tensors hold none)."""
        if self.optimizer is None:
            return 0
        return sum(t.numel() for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def finetune(model: Model, examples: list[Example] | BatchFn, cfg: FinetuneConfig, ctx: Context,
             frozen: Iterable[str] = (), trainable: Iterable[torch.nn.Parameter] | None = None,
             loss_fn: LossFn | None = None, callback: Callable[[int, float], bool | None] | None = None,
             export: Callable[[Model], Model] | None = None) -> FinetuneResult:
    """Train ``model`` in place (see the module docstring): a loop of :meth:`Trainer.step`.

    Afterwards every ``requires_grad`` flag is as before and the model is back on its device in float32.
    When ``ctx.anytime`` is set (the runner's anytime evaluation), the run continues from its ``resume`` state
    if there is one, and after each of its budgets hands ``export(model)`` (default: a copy of the model)
    and the training state to ``ctx.anytime.save``; snapshots read the weights only, so training is unchanged.
    """
    trainer = Trainer(model, cfg, ctx, frozen, trainable)
    batches = examples if callable(examples) else SeededBatcher(list(examples), cfg.batch_size, model.resolution)
    with trainer:
        run = _Run(trainer, batches)
        start = run.resume(ctx.anytime.resume) if ctx.anytime is not None and ctx.anytime.resume else 0
        losses, seconds, peak = _loop(run, start, loss_fn, callback, export)
    return FinetuneResult(losses=losses, seconds=seconds, seconds_per_step=seconds / max(len(losses), 1),
                          peak_memory_mb=peak, trainable_params=sum(p.numel() for p in trainer.params),
                          trainable_tensors=len(trainer.params), optimizer_state_numel=trainer.optimizer_state_numel(),
                          device=trainer.device, info={"mixed_precision": cfg.mixed_precision})


def exact_stops(cfg: FinetuneConfig, budgets: Iterable[int]) -> bool:
    """Whether stopping this run at each of ``budgets`` gives what a run of that many steps would.

    True for a constant learning rate (and a warm-up that ends before the first budget); a decaying schedule
    is stretched over the whole run, so its intermediate snapshots saw higher rates than a shorter run would.
    """
    if cfg.lr_scheduler == "constant":
        return True
    return cfg.lr_scheduler == "constant_with_warmup" and all(b >= cfg.lr_warmup_steps for b in budgets)


class _Run:
    """Everything a training run's exact continuation depends on, for anytime snapshots and resume."""

    def __init__(self, trainer: Trainer, batches: Any):
        self.trainer, self.batches = trainer, batches

    def named_params(self) -> dict[str, torch.nn.Parameter]:
        ids = {id(p) for p in self.trainer.params}
        return {f"{component}.{name}": p for component, module in self.trainer.model.components().items()
                for name, p in module.named_parameters() if id(p) in ids}

    def state(self, step: int) -> dict[str, Any]:
        """The training state after ``step`` optimizer steps (tensors are shared: save it before going on)."""
        t = self.trainer
        scaler = getattr(t.accelerator, "scaler", None)
        batches = self.batches.state_dict() if hasattr(self.batches, "state_dict") else None
        return {"step": step, "exact": exact_stops(t.cfg, [step]),
                "params": {n: p.detach().cpu() for n, p in self.named_params().items()},
                "optimizer": t.optimizer.state_dict(), "scheduler": t.schedule.state_dict(),
                "generator": t.generator.get_state(), "batches": batches,
                "scaler": scaler.state_dict() if scaler is not None else None}

    def resume(self, state: dict[str, Any]) -> int:
        """Load a saved training state; return its step (0, start over, when it cannot be continued exactly)."""
        t = self.trainer
        named = self.named_params()
        if set(state["params"]) != set(named) or (state["batches"] is not None) != hasattr(self.batches,
                                                                                              "load_state_dict"):
            t.ctx.log("anytime: the saved training state does not match this run; training from step 0")
            return 0
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["params"][name].to(p.device, p.dtype))
        t.optimizer.load_state_dict(state["optimizer"])
        t.schedule.load_state_dict(state["scheduler"])
        t.generator.set_state(state["generator"])
        if state["batches"] is not None:
            self.batches.load_state_dict(state["batches"])
        scaler = getattr(t.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        return int(state["step"])


def _loop(run: _Run, start: int, loss_fn, callback, export):
    import psutil
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from advbench.profiling import peak_memory

    trainer, batches = run.trainer, run.batches
    cfg, ctx, generator = trainer.cfg, trainer.ctx, trainer.generator
    snapshots = set(ctx.anytime.budgets) if ctx.anytime is not None else set()
    baseline = psutil.Process().memory_info().rss / 2**20
    losses: list[float] = []
    # Refreshed from this thread (at most 10 times a second) rather than by rich's refresh thread: on busy
    # shared cores every extra thread that wakes up and takes the GIL can stall the training thread.
    progress = Progress(TextColumn("fine-tune"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True, disable=not ctx.progress, auto_refresh=False)
    with peak_memory(trainer.device) as m, progress:
        task = progress.add_task("fine-tune", total=cfg.steps, completed=start, loss=float("nan"))
        began = shown = time.perf_counter()
        for step in range(start, cfg.steps):
            batch = _augment(batches(step, generator), cfg, generator)
            losses.append(trainer.step(batch, loss_fn, step))
            now = time.perf_counter()
            refresh = now - shown >= 0.1
            shown = now if refresh else shown
            progress.update(task, advance=1, loss=losses[-1], refresh=refresh)
            stop = callback is not None and callback(step, losses[-1])
            if step + 1 in snapshots and step + 1 < cfg.steps:
                # An anytime snapshot: a copy of what the attack would return now, and the state to go on from.
                with torch.no_grad():
                    snapshot = export(trainer.model) if export is not None else trainer.model.clone()
                ctx.anytime.save(step + 1, snapshot, run.state(step + 1))
                if ctx.anytime.stop_after == step + 1:
                    raise BudgetReached(step + 1)
            if stop:
                break
        seconds = time.perf_counter() - began
    cuda = trainer.device.startswith("cuda")
    peak = m.peak_memory_mb if cuda else max(m.peak_memory_mb - baseline, 0.0)
    return losses, seconds, peak
