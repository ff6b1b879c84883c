"""FreezeAsGuard cost: mask learning against plain fine-tuning, and what freezing saves the attacker.

    python benchmarks/bench_freezeasguard.py [--model FOLDER] [--threads N] [--batch-size 8] [--steps 8]

1. One mask-learning step (L lower-level steps + 1 upper-level step) against one plain full fine-tuning step
   (the engine, Adam) on the same model and the same batch (half illegal, half legal images): wall time per
   lower step, i.e. (L lower + 1 upper) / L, and peak memory (targets: ≤ 1.3× time, ≤ 1.5× memory).
2. The attacker's fine-tune (the engine with the freeze mask, as the ``fullft`` attack runs it) per step and
   peak memory for p ∈ {0, 0.1, 0.3, 0.5}, with FreezeAsGuard's mask (FG-p, a short mask learning per p) and
   random freezing (R-p). The paper reports 22–48 % memory and 13–21 % time saved on SD 1.5.

Every measurement runs in a fresh subprocess, so a peak (CUDA peak allocated, or on CPU the growth of the
resident set over the measured phase) is not hidden by memory an earlier run left to the allocator. Time per
step is the median over the steps after ``--warmup`` (mask learning: after the first mask step), as wall time
and as the process's CPU time (all threads), which a shared machine's load disturbs less; part 1 alternates
``--repeats`` runs of each side and reports medians. The model: ``--model``, else the tiny world model if the
package assets hold one, else a randomly initialised model of the world's architecture (timings do not depend
on the weights). Run it alone: the machine's cores are shared; the thread count and load average are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORLD_MODEL = ROOT / "plugins" / "advbench_plugins" / "world" / "assets" / "model"
RATIOS = (0.0, 0.1, 0.3, 0.5)


def load_model(folder: str | None):
    """The model to time and where it came from."""
    from advbench.model import META_FILE, Model

    if folder:
        return Model.load(folder), f"{folder} (--model)"
    if (WORLD_MODEL / META_FILE).exists():
        return Model.load(WORLD_MODEL), f"tiny world model {WORLD_MODEL.relative_to(ROOT)}"
    from advbench_plugins.world.worldmodel import WorldModelConfig, new_world_model

    return new_world_model(WorldModelConfig()), "world architecture, random init (no world model in assets yet)"


def examples(n_per_class: int):
    """Two illegal and two legal classes of 32×32 test patterns."""
    from advbench.testing import tiny_dataset

    data = tiny_dataset(n_classes=4, n_per_class=n_per_class)
    return data.examples("class_0") + data.examples("class_1"), data.examples("class_2") + data.examples("class_3")


# ------------------------------------------------------------------------------------------ workers
def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process; returns seconds per step and peak memory."""
    import torch

    from advbench.finetune import FinetuneConfig, finetune
    from advbench.interfaces import Context
    from advbench.profiling import measure

    torch.set_num_threads(spec["threads"])
    model, _ = load_model(spec["model"])
    device = spec["device"]
    half = spec["batch_size"] // 2
    illegal, legal = examples(half)
    ctx = Context(seed=0, device=device, progress=False)
    if spec["kind"] in ("plain", "attack"):
        from advbench.data import examples_to_tensor

        if spec["kind"] == "plain":  # exactly the batch the mask learner sees: half illegal, half legal
            batch = illegal[:half] + legal[:half]
            pixels = examples_to_tensor(batch, model.resolution)
            data = lambda step, generator: {"pixel_values": pixels, "captions": [e.text for e in batch]}  # noqa: E731
        else:
            data = illegal
        frozen = json.loads(Path(spec["frozen"]).read_text()) if spec.get("frozen") else []
        stamps: list[tuple[float, float]] = []
        cfg = FinetuneConfig(steps=spec["warmup"] + spec["steps"], batch_size=spec["batch_size"], lr=5e-4)
        result = finetune(model, data, cfg, ctx, frozen=frozen,
                          callback=lambda step, loss: stamps.append((time.perf_counter(), time.process_time())))
        pairs = list(zip(stamps[spec["warmup"] - 1:], stamps[spec["warmup"]:]))
        return {"s_per_step": statistics.median(b[0] - a[0] for a, b in pairs),
                "cpu_per_step": statistics.median(b[1] - a[1] for a, b in pairs), "peak_mb": result.peak_memory_mb,
                "trainable_params": result.trainable_params, "trainable_tensors": result.trainable_tensors}

    from advbench.finetune import _accelerator, _release_accelerator
    from advbench_plugins.defenses.fg_bilevel import BilevelConfig, BilevelState, RoleBatches, initial_w, learn_mask

    cfg = BilevelConfig(mask_steps=spec["mask_steps"], lower_steps=spec["lower_steps"],
                        batch_size=spec["batch_size"])
    accelerator = _accelerator("no", device)
    model.to(accelerator.device)
    for module in model.components().values():
        module.requires_grad_(False).eval()
    model.unet.requires_grad_(True).train()
    pretrained = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    finetuned = {n: t + 1e-3 * torch.randn_like(t) for n, t in pretrained.items()}
    batches = RoleBatches(illegal[:half], legal[:half], cfg.batch_size, model.resolution)
    baseline = _rss_mb() if not device.startswith("cuda") else 0.0
    with measure(str(accelerator.device)) as m:
        state = BilevelState(model.unet, pretrained, finetuned, initial_w(len(pretrained), cfg.init_w, 0),
                             cfg.temperature)
        del finetuned
        result = learn_mask(model, state, batches, cfg, ctx, accelerator)
    _release_accelerator()
    L = cfg.lower_steps
    peak = m.peak_memory_mb if device.startswith("cuda") else max(m.peak_memory_mb - baseline, 0.0)
    out = {"peak_mb": peak}
    for clock, lower, upper in (("s", result.lower_step_seconds, result.upper_step_seconds),
                                ("cpu", result.lower_step_cpu, result.upper_step_cpu)):
        # Steady state: the mask steps after the first (which warms up caches and the allocator).
        mask_steps = [sum(lower[k * L:(k + 1) * L]) + upper[k] for k in range(1, len(upper))]
        out.update({f"{clock}_per_step": statistics.median(mask_steps) / L, f"{clock}_lower": statistics.median(
            lower[L:]), f"{clock}_upper": statistics.median(upper[1:])})
    return out


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_worker(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])})
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- masks
def masks(args, model, folder: Path) -> dict[str, Path]:
    """Frozen-name files for FG-p (a short mask learning per p, θ_ft shared) and R-p."""
    from advbench.interfaces import Context, PublisherData
    from advbench.params import build_params
    from advbench_plugins.defenses.freezeasguard import FreezeAsGuard
    from advbench_plugins.defenses.random import RandomFreeze

    illegal, legal = examples(16)
    data = PublisherData(illegal={"class_0": illegal[:16], "class_1": illegal[16:]},
                         legal={"class_2": legal[:16], "class_3": legal[16:]})
    files = {}
    for p in RATIOS[1:]:
        ctx = Context(seed=0, device=args.device, progress=False, work_dir=folder / f"fg-{p}",
                      cache_dir=folder / "cache")
        fg = FreezeAsGuard(build_params(FreezeAsGuard.Params, {
            "p": p, "mask_steps": args.fg_mask_steps, "lower_steps": args.lower_steps,
            "init_ft_steps": args.fg_init_steps, "batch_size": args.batch_size}, "freezeasguard"))
        for name, defense in (("FG", fg), ("R", RandomFreeze(build_params(RandomFreeze.Params, {"p": p}, "random")))):
            mask = defense.protect(model, data, ctx).constraint("freeze_mask")
            files[f"{name}-{p}"] = folder / f"{name}-{p}.json"
            files[f"{name}-{p}"].write_text(json.dumps(mask.frozen_names()))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the tiny world model, else its architecture)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (FG default 8, paper 16)")
    parser.add_argument("--lower-steps", type=int, default=10, help="L (paper: about 10)")
    parser.add_argument("--steps", type=int, default=8, help="measured fine-tune steps")
    parser.add_argument("--warmup", type=int, default=3, help="fine-tune steps excluded from the timing")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each measurement")
    parser.add_argument("--fg-mask-steps", type=int, default=3, help="mask steps of the FG-p masks in part 2")
    parser.add_argument("--fg-init-steps", type=int, default=20, help="θ_ft steps of the FG-p masks in part 2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    console = Console(width=120)
    model, source = load_model(args.model)
    n_params = sum(p.numel() for p in model.unet.parameters())
    n_tensors = len(list(model.unet.parameters()))
    console.print(f"model: {source}; UNet {n_params / 1e6:.2f}M params in {n_tensors} tensors")
    console.print(f"torch {torch.__version__}, torch threads {threads}, cpu cores {os.cpu_count()}, device "
                  f"{args.device}; batch {args.batch_size}; load average {_load()}")
    base = {"model": args.model, "device": args.device, "threads": threads, "batch_size": args.batch_size}

    runs: dict[str, list[dict]] = {"plain": [], "fg": []}
    for r in range(args.repeats):  # alternate, so drift in the shared machine's load hits both sides
        for kind in (("plain", "fg") if r % 2 == 0 else ("fg", "plain")):
            spec = {"steps": args.steps, "warmup": args.warmup} if kind == "plain" else {
                "mask_steps": 3, "lower_steps": args.lower_steps}
            runs[kind].append(run_worker({**base, "kind": kind, **spec}))
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    plain, fg = med["plain"], med["fg"]
    table = Table(title=f"1. mask learning (L = {args.lower_steps} lower + 1 upper) vs plain full fine-tuning "
                        f"(medians of {args.repeats} runs)")
    for col in ("", "wall s / step", "CPU s / step", "peak MB", "wall ratio", "CPU ratio (≤ 1.3)",
                "memory ratio (≤ 1.5)"):
        table.add_column(col, justify="right")

    def row(label, s, cpu, peak=None):
        table.add_row(label, f"{s:.3f}", f"{cpu:.3f}", "" if peak is None else f"{peak:.0f}",
                      f"{s / plain['s_per_step']:.2f}", f"{cpu / plain['cpu_per_step']:.2f}",
                      "" if peak is None else f"{peak / max(plain['peak_mb'], 1e-9):.2f}")

    row("plain full FT (Adam)", plain["s_per_step"], plain["cpu_per_step"], plain["peak_mb"])
    row("FG (L lower + 1 upper) / L", fg["s_per_step"], fg["cpu_per_step"], fg["peak_mb"])
    row("  FG lower step", fg["s_lower"], fg["cpu_lower"])
    row("  FG upper step", fg["s_upper"], fg["cpu_upper"])
    console.print(table)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        files = masks(args, model, Path(tmp))
        console.print(f"FG-p and R-p masks made in {time.perf_counter() - started:.0f} s; load average {_load()}")
        specs = {"none (p = 0)": None, **{key: str(path) for key, path in files.items()}}
        runs = {key: [] for key in specs}
        keys = list(specs)
        for r in range(args.repeats):  # a rotating order, so the machine's load drift hits every mask alike
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                runs[key].append(run_worker({**base, "kind": "attack", "steps": args.steps, "warmup": args.warmup,
                                             "frozen": specs[key]}))
    rows = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    ref = rows["none (p = 0)"]
    table = Table(title=f"2. attacker's full fine-tune with the freeze mask (engine, Adam; medians of "
                        f"{args.repeats} runs)")
    for col in ("mask", "trainable tensors", "trainable params", "wall s / step", "CPU s / step", "CPU time saved",
                "peak MB", "memory saved"):
        table.add_column(col, justify="right")
    for key, r in rows.items():
        table.add_row(key, str(r["trainable_tensors"]), f"{r['trainable_params'] / 1e6:.2f}M", f"{r['s_per_step']:.3f}",
                      f"{r['cpu_per_step']:.3f}", f"{100 * (1 - r['cpu_per_step'] / ref['cpu_per_step']):+.0f} %",
                      f"{r['peak_mb']:.0f}", f"{100 * (1 - r['peak_mb'] / max(ref['peak_mb'], 1e-9)):+.0f} %")
    console.print(table)
    console.print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
