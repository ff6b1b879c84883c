"""The *exposed* base: the base model fine-tuned on the publisher's share of every class the cell uses.

A benchmark whose base model has never seen its classes cannot test erasure: UCE or Dark Miner would have no
knowledge of a public figure to remove. Stable Diffusion does know public figures; the tiny world's base model
does not (its benchmark classes are held out of pretraining). ``base = "exposed"`` gives a cell that
knowledge first: a full fine-tune of the base on the publisher's share of the illegal *and* legal classes
(captions as they are), through the shared engine. Every defense and attack of a cell then starts from it.

The exposure is a stage of its own, keyed by the naive base's fingerprint, the publisher's images, the
recipe and the seed, so it is built once per domain/seed and shared by every defense and attack on it. The
attacker's share and the held-out references are never used. Its recipe (:data:`EXPOSURE`, overridable per
domain by :meth:`advbench.interfaces.Domain.exposure`) is recorded with the cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advbench.runner import _CellRun

BASES = ("naive", "exposed")
EXPOSURE_VERSION = 1
# Full fine-tuning of the UNet *and* the text encoder at the world check's attacker rate, 800 steps. Both
# matter (no attack, recognition of the four classes, seed 0): UNet only, 400 or 800 steps, left a portraits
# identity at 0.06 (the naive text encoder barely separates the names; SD's knows them); with the text
# encoder, 400 steps left an artworks style at 0.00 (lr 1e-3: 0.44); 800 steps brought all four to >= 0.94.
# docs/world.md ("The exposed base") has the table.
EXPOSURE: dict[str, Any] = {"steps": 800, "batch_size": 8, "lr": 5e-4, "optimizer": "adam", "train_text_encoder": True}


def exposure_recipe(domain: Any) -> dict[str, Any]:
    """The fine-tuning recipe of ``domain``'s exposed base: :data:`EXPOSURE` updated by the domain's own."""
    from advbench.finetune import FinetuneConfig

    recipe = {**EXPOSURE, **(domain.exposure() or {})}
    FinetuneConfig(**recipe)  # validates (a ParamError names the bad value)
    return recipe


def expose_stage(run: _CellRun) -> tuple[Any, str, dict[str, Any]]:
    """``(model, key, facts)``: the exposed base of ``run``'s cell, built on first use and then cached."""
    from advbench.finetune import FinetuneConfig, finetune
    from advbench.model import Model
    from advbench.runner import examples_hash

    recipe = exposure_recipe(run.domain)
    examples = [e for _, c in run.classes() for e in run.data.publisher[c]]
    key = run.key("expose", {"version": EXPOSURE_VERSION, "model": run.model_fp, "seed": run.cell.seed,
                             "publisher": examples_hash(examples), "recipe": recipe,
                             "mixed_precision": run.cell.mixed_precision})

    def build(folder: Path) -> None:
        model = run.naive.clone()
        ctx = run.context(folder / "artifacts")
        ctx.log(f"exposed base: fine-tuning on the publisher's share of {len(run.classes())} classes "
                f"({len(examples)} images, {recipe['steps']} steps)")
        result = finetune(model, examples, FinetuneConfig(**recipe, mixed_precision=run.cell.mixed_precision), ctx)
        model.save(folder / "model")
        (folder / "exposure.json").write_text(json.dumps({"recipe": recipe, "images": len(examples),
                                                          "final_loss": result.losses[-1],
                                                          "seconds": round(result.seconds, 3)}))

    folder = run.stage("expose", key, build)
    facts = {"base": "exposed", "key": key, **json.loads((folder / "exposure.json").read_text())}
    return Model.load(folder / "model"), key, facts
