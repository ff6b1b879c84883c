"""Per-attack cost: seconds per optimizer step and peak memory of each attack's fine-tuning, on one class.

    python benchmarks/bench_attacks.py [--model FOLDER] [--steps 20] [--batch-size 8] [--threads 2]
                                       [--attacks fullft,lora,dreambooth,dreambooth-lora,textual-inversion]

Each attack adapts the same model on the same attacker images with its own defaults except ``steps`` and
``batch_size`` (DreamBooth's batch is that many instance images plus as many class images). The numbers come
from the shared engine's ``FinetuneResult`` (steady state: the first ``--warmup`` steps are dropped using
per-step timestamps); ``adapt s`` is the whole ``adapt`` call, including DreamBooth's class-image generation
(cold cache) and LoRA's save/merge. Peak memory: on CPU the resident-set growth during fine-tuning, on CUDA
torch's peak allocated memory.

Model: ``--model`` if given, else the tiny world model if ``plugins/advbench_plugins/world/assets/`` holds one
(attacked on the portraits domain's first illegal identity), else ``advbench.testing.tiny_model`` scaled up to
channels (48, 64, 96) on ``tiny_dataset``. Run it alone: the 2 cores are shared; the load average is printed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

import torch

ATTACKS = {
    "fullft": "advbench_plugins.attacks.fullft:FullFineTune",
    "lora": "advbench_plugins.attacks.lora:Lora",
    "dreambooth": "advbench_plugins.attacks.dreambooth:DreamBooth",
    "dreambooth-lora": "advbench_plugins.attacks.dreambooth:DreamBoothLoRA",
    "textual-inversion": "advbench_plugins.attacks.textual_inversion:TextualInversion",
}
WORLD_ASSETS = Path(__file__).resolve().parent.parent / "plugins" / "advbench_plugins" / "world" / "assets"


def load_world(folder: str | None, images: int):
    """(model, attacker examples, class name, description)."""
    from advbench.model import META_FILE, Model

    found = sorted(p.parent for p in WORLD_ASSETS.rglob(META_FILE)) if WORLD_ASSETS.is_dir() else []
    if folder or found:
        from advbench_plugins.world.domains import world_dataset
        from advbench_plugins.world.generators import get_generator

        path = folder or found[0]
        cls = get_generator("portraits").illegal[0]
        examples = world_dataset("portraits", [cls], images).examples(cls)
        return Model.load(path), examples, cls, f"{path} on portraits/{cls}"
    from advbench.testing import tiny_dataset, tiny_model

    model = tiny_model(channels=(48, 64, 96), text_hidden=64, max_length=24)
    return (model, tiny_dataset(n_classes=1, n_per_class=images).examples("class_0"), "class_0",
            "advbench.testing.tiny_model(channels=(48, 64, 96), text_hidden=64) — no world model in assets/")


def build(name: str, steps: int, batch_size: int):
    from advbench.params import build_params

    module, _, cls_name = ATTACKS[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    attack = cls(build_params(cls.Params, {"steps": steps, "batch_size": batch_size}, f"attack '{name}'"))
    attack.name = name
    return attack


def run_one(name: str, model, examples, cls: str, args, work: Path) -> dict:
    """Adapt once; the engine's measurements of the (single) fine-tuning run plus the adapt wall time."""
    import advbench.finetune as engine
    from advbench.interfaces import AttackData, Context, ProtectedModel

    results, stamps = [], []
    real = engine.finetune

    def spy(*a, **kw):
        user_callback = kw.pop("callback", None)

        def callback(step, loss):
            stamps.append(time.perf_counter())
            return user_callback(step, loss) if user_callback else None

        results.append(real(*a, callback=callback, **kw))
        return results[-1]

    engine.finetune = spy
    try:
        ctx = Context(seed=0, device=args.device, progress=False, work_dir=work / name)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build(name, args.steps, args.batch_size).adapt(ProtectedModel(model), AttackData(cls, examples, "illegal"),
                                                        ctx)
        adapt_seconds = time.perf_counter() - start
    finally:
        engine.finetune = real
    result = results[-1]
    steady = (stamps[-1] - stamps[args.warmup - 1]) / (len(stamps) - args.warmup)
    return {"attack": name, "s/step": steady, "peak MB": result.peak_memory_mb,
            "trainable": result.trainable_params, "adapt s": adapt_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the tiny world model, else a tiny_model)")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=24, help="attacker images of the class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    names = [n.strip() for n in args.attacks.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    model, examples, cls, where = load_world(args.model, args.images)
    console = Console()
    console.print(f"model: {where}; UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M params; "
                  f"device {args.device}, {torch.get_num_threads()} threads, load average "
                  f"{os.getloadavg()[0]:.2f}; {args.steps} steps (first {args.warmup} dropped), batch "
                  f"{args.batch_size}")
    table = Table(title="attack cost per optimizer step")
    for col in ("attack", "s/step", "peak MB", "trainable", "adapt s"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ADVBENCH_CACHE"] = str(Path(tmp) / "cache")  # cold class-image cache for DreamBooth
        for name in names:
            row = run_one(name, model, examples, cls, args, Path(tmp))
            table.add_row(name, f"{row['s/step']:.3f}", f"{row['peak MB']:.0f}", f"{row['trainable']:,}",
                          f"{row['adapt s']:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
