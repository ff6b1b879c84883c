"""``advbench world build``: pretrain the world model and train the judges, writing the package assets.

Everything is seeded, so a build on the same software reproduces the shipped files (up to floating-point
non-determinism across machines). Asset layout::

    assets/model/        the world model (an advbench Model folder: diffusers parts, safetensors)
    assets/judges/       per judge (and the defense-side encoder ``verifier``): <kind>.safetensors + <kind>.json
                         (architecture and training facts)
    assets/build.json    what the build measured (pretraining losses and time, judge accuracies)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

ASSETS = Path(__file__).parent / "assets"


def model_dir(assets: Path | None = None) -> Path:
    return Path(assets or ASSETS) / "model"


def judges_dir(assets: Path | None = None) -> Path:
    return Path(assets or ASSETS) / "judges"


def judge_files(kind: str, folder: str | Path | None = None) -> tuple[Path, Path]:
    """The weights and facts files of a judge or defense-side encoder in ``folder`` (default: the shipped ones).

    Torch-free, so a domain can check its files before any work; a missing one is a one-line DataError naming
    the file and the command that builds it.
    """
    from advbench.errors import DataError

    base = Path(folder) if folder else judges_dir()
    weights, info = base / f"{kind}.safetensors", base / f"{kind}.json"
    for path in (weights, info):
        if not path.is_file():
            command = f"advbench world build --only {kind}"
            # the build writes OUT/judges/, so a folder of one's own is rebuilt with --out naming the one above
            fix = (f"`{command}`" if base.resolve() == judges_dir().resolve() else
                   f"`{command} --out {base.parent}`" if base.name == "judges" else
                   f"`{command} --out DIR` and pass judges=DIR/judges")
            raise DataError(f"tiny-world {kind} weights missing: {path} does not exist; build it with {fix}")
    return weights, info


def build_model(out: Path, model_cfg, pretrain_cfg, threads: int = 1, log: Callable[[str], None] = print) -> dict:
    """Pretrain a world model and save it under ``out/model``; returns the pretraining facts."""
    import torch

    from advbench.interfaces import Context
    from advbench_plugins.world.worldmodel import new_world_model, pretrain

    torch.set_num_threads(threads)
    model = new_world_model(model_cfg, seed=pretrain_cfg.seed)
    log(f"world model: UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M params, text encoder "
        f"{sum(p.numel() for p in model.text_encoder.parameters()) / 1e6:.2f}M params")

    def checkpoint(step: int) -> None:  # a usable model exists long before the build ends
        model.save(model_dir(out))
        log(f"checkpoint at step {step} saved to {model_dir(out)}")

    facts = pretrain(model, pretrain_cfg, Context(seed=pretrain_cfg.seed, progress=False), log=log,
                     checkpoint=checkpoint)
    facts["model_config"] = asdict(model_cfg)
    facts["threads"] = threads
    model.save(model_dir(out))
    return facts


def build(out: Path | None = None, model_cfg=None, pretrain_cfg=None, judge_cfg=None, threads: int = 1,
          log: Callable[[str], None] = print, parts: tuple[str, ...] = ("model", "judges"),
          judges: tuple[str, ...] | None = None) -> dict:
    """Build the whole world (model and/or judges) into ``out`` (default: the package assets).

    ``judges`` restricts the judges (and defense-side encoders) trained (default: all); the others' files and
    facts stay as they are.
    """
    from advbench_plugins.world.worldmodel import PretrainConfig, WorldModelConfig

    out = Path(out or ASSETS)
    out.mkdir(parents=True, exist_ok=True)
    facts_file = out / "build.json"
    facts = json.loads(facts_file.read_text()) if facts_file.exists() else {}
    start = time.perf_counter()
    if "model" in parts:
        facts["pretrain"] = build_model(out, model_cfg or WorldModelConfig(), pretrain_cfg or PretrainConfig(),
                                        threads, log)
    if "judges" in parts:
        from advbench_plugins.world.judges import TRAINED, JudgeTrainConfig, train_judges

        has_model = (model_dir(out) / "unet").is_dir()
        trained = train_judges(judges_dir(out), judge_cfg or JudgeTrainConfig(), threads=threads, log=log,
                               kinds=judges or TRAINED, model_folder=model_dir(out) if has_model else None)
        facts["judges"] = {**facts.get("judges", {}), **trained}
    facts["build_seconds"] = round(time.perf_counter() - start, 1)
    facts_file.write_text(json.dumps(facts, indent=2, sort_keys=True))
    return facts
