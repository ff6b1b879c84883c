"""Harness overhead of a fine-tune: ``advbench.finetune.finetune`` against a minimal hand-written torch loop.

    python benchmarks/overhead.py [--model FOLDER] [--steps 30] [--warmup 5] [--repeats 5] [--threads 2]

Both sides train the same model (a fresh copy of the same initial weights each run) on the same pixel tensor
and captions, with the same Adam optimizer, gradient clipping and DDPM epsilon loss, for the same number of
steps. The hand-written loop is what a diffusers example would do with no framework: captions tokenized once,
a seeded batch permutation, noise and timesteps from a seeded generator, ``unet(...)``, MSE, backward, clip,
step. The harness side is the real engine as attacks call it (accelerate, progress bar, peak-memory tracking,
per-step loss logging, requires_grad bookkeeping).

Per-step time is taken from timestamps after every optimizer step (the engine's ``callback``; the plain loop
stamps at the same point), excluding the first ``--warmup`` steps; harness and plain runs alternate (order
flipped every repeat) so that drift in the shared machine's load hits both; the table shows medians over
``--repeats``. ``call s`` is the whole call including set-up and warm-up, for the fixed per-call cost.

Model: ``--model`` if given, else the tiny world model if ``plugins/advbench_plugins/world/assets/`` holds one
(a folder with ``advbench_model.json``), else ``advbench.testing.tiny_model`` scaled up to channels (48, 64, 96).
Run it alone if you can: the 2 cores are shared, and the load average is printed next to the numbers.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advbench.data import examples_to_tensor
from advbench.finetune import FinetuneConfig, finetune
from advbench.interfaces import Context
from advbench.model import META_FILE, Model

WORLD_ASSETS = Path(__file__).resolve().parent.parent / "plugins" / "advbench_plugins" / "world" / "assets"


def load_model(folder: str | None) -> tuple[Model, str]:
    """The model to train and a one-line description of where it came from."""
    if folder:
        return Model.load(folder), f"{folder} (--model)"
    found = sorted(p.parent for p in WORLD_ASSETS.rglob(META_FILE)) if WORLD_ASSETS.is_dir() else []
    if found:
        return Model.load(found[0]), f"tiny world model {found[0]}"
    from advbench.testing import tiny_model

    return (tiny_model(channels=(48, 64, 96), text_hidden=64, max_length=24),
            "advbench.testing.tiny_model(channels=(48, 64, 96), text_hidden=64) — no world model in assets/")


def plain_loop(model: Model, pixels: torch.Tensor, captions: list[str], cfg: FinetuneConfig, seed: int
               ) -> list[float]:
    """The minimal hand-written loop; returns a timestamp after every optimizer step."""
    unet, text_encoder, tokenizer, scheduler = model.unet, model.text_encoder, model.tokenizer, model.scheduler
    text_encoder.requires_grad_(False).eval()
    unet.requires_grad_(True).train()
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    params = list(unet.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    queue: list[int] = []
    stamps = []
    for _ in range(cfg.steps):
        while len(queue) < cfg.batch_size:
            queue += torch.randperm(len(captions), generator=generator).tolist()
        idx, queue = queue[: cfg.batch_size], queue[cfg.batch_size:]
        latents = model.encode_images(pixels[idx])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        # Forward diffusion: x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε; the UNet learns to predict ε.
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids[idx]).last_hidden_state
        loss = F.mse_loss(unet(noisy, timesteps, hidden).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # a real loop logs the loss too (and this waits for the step to finish)
        stamps.append(_stamp())
    return stamps


def harness_run(model: Model, examples, cfg: FinetuneConfig, ctx: Context) -> list[float]:
    """The engine as attacks call it; returns a timestamp after every optimizer step."""
    stamps: list[tuple[float, float]] = []
    finetune(model, examples, cfg, ctx, callback=lambda step, loss: stamps.append(_stamp()))
    return stamps


def _stamp() -> tuple[float, float]:
    """(wall clock, CPU seconds of the whole process, every thread included)."""
    return time.perf_counter(), time.process_time()


def timed(warmup: int, fn, *args) -> tuple[float, float, float]:
    """Steady-state (wall s/step, CPU s/step) after ``warmup`` steps, and the whole call's wall seconds."""
    start = time.perf_counter()
    stamps = fn(*args)
    call = time.perf_counter() - start
    n = len(stamps) - warmup
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[-1]
    return (w1 - w0) / n, (c1 - c0) / n, call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the tiny world model, else a tiny_model)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true", help="run the engine without its progress bar")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    torch.set_num_threads(args.threads)

    from rich.console import Console

    from advbench.testing import tiny_dataset

    console = Console(width=120)
    base, source = load_model(args.model)
    base.to("cpu", torch.float32)
    examples = tiny_dataset(n_classes=1, n_per_class=args.images, resolution=base.resolution).examples("class_0")
    pixels = examples_to_tensor(examples, base.resolution)
    captions = [ex.text for ex in examples]
    cfg = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-5, optimizer="adam", max_grad_norm=1.0)
    ctx = Context(seed=0, progress=not args.no_progress)
    unet_params = sum(p.numel() for p in base.unet.parameters())
    console.print(f"model: {source}; UNet {unet_params / 1e6:.2f}M params, resolution {base.resolution}")
    console.print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu cores {os.cpu_count()}; "
                  f"batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up excluded), "
                  f"{args.repeats} repeats; progress bar {'off' if args.no_progress else 'on'}")
    console.print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "harness": []}
    for r in range(args.repeats):
        order = ("plain", "harness") if r % 2 == 0 else ("harness", "plain")
        for side in order:
            model = copy.deepcopy(base)
            if side == "plain":
                runs[side].append(timed(args.warmup, plain_loop, model, pixels, captions, cfg, 0))
            else:
                runs[side].append(timed(args.warmup, harness_run, model, examples, cfg, ctx))
        console.print(f"repeat {r + 1}: " + ", ".join(
            f"{s} {runs[s][-1][0]:.4f} s/step wall, {runs[s][-1][1]:.4f} CPU" for s in runs))
    load = os.getloadavg()
    console.print(report(runs))
    for k, label in ((0, "wall"), (1, "CPU")):
        paired = [100 * (h[k] / p[k] - 1) for h, p in zip(runs["harness"], runs["plain"])]
        console.print(f"per-repeat {label} overhead: {', '.join(f'{x:+.1f} %' for x in paired)}; "
                      f"median {statistics.median(paired):+.1f} % (target <= 5 %)")
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in load)}")


def report(runs: dict[str, list[tuple[float, float, float]]]):
    """The table: median wall and CPU seconds/step per loop (range in brackets), call seconds, overheads."""
    from rich.table import Table

    med = {s: [statistics.median(x[k] for x in runs[s]) for k in range(3)] for s in runs}
    table = Table(title="fine-tune harness overhead (medians over repeats)")
    for col in ("loop", "wall s/step", "(min-max)", "CPU s/step", "call s", "wall overhead", "CPU overhead"):
        table.add_column(col, justify="left" if col == "loop" else "right")
    for side in ("plain", "harness"):
        walls = [x[0] for x in runs[side]]
        over = [""] * 2 if side == "plain" else [f"{100 * (med[side][k] / med['plain'][k] - 1):+.1f} %"
                                                 for k in (0, 1)]
        table.add_row(side, f"{med[side][0]:.4f}", f"{min(walls):.3f}-{max(walls):.3f}", f"{med[side][1]:.4f}",
                      f"{med[side][2]:.2f}", *over)
    return table


if __name__ == "__main__":
    main()
