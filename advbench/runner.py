"""Run a cell: protect → adapt (per attacked class) → generate → score, every stage cached by content hash.

The defense sees only the publisher's share of the data, each attack only the attacker's share of the class it
attacks, and the metrics compare generated images with the held-out reference images.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advbench.cache import StageCache, stable_hash
from advbench.cells import Cell, PluginSpec
from advbench.errors import StaleResultError
from advbench.interfaces import AttackData, Context, Example, ProtectedModel, PublisherData
from advbench.profiling import measure
from advbench.results import ResultStore, cell_id, config_hash, provenance

# Bump a stage's version when its output format or semantics change, so old cache entries are not reused.
STAGE_VERSIONS = {"protect": 1, "adapt": 1, "generate": 1, "score": 1}


@dataclass
class RunOptions:
    """How to run cells (nothing here changes what a result means, so none of it is in the cell id)."""

    cache_dir: str | Path | None = None
    use_cache: bool = True
    device: str = "cpu"
    mixed_precision: str = "no"
    progress: bool = True
    on_stage: Callable[[str, dict[str, Any]], None] | None = None


@dataclass
class _CellRun:
    cell: Cell
    options: RunOptions
    cache: StageCache
    stages: list[dict[str, Any]] = field(default_factory=list)

    def context(self, work_dir: Path) -> Context:
        return Context(seed=self.cell.seed, device=self.options.device,
                       mixed_precision=self.options.mixed_precision, threat_model=self.cell.threat_model,
                       work_dir=work_dir, progress=self.options.progress,
                       cache_dir=self.cache.root if self.cache.enabled else None)

    def stage(self, name: str, key_parts: dict[str, Any], build: Callable[[Path], None],
              cls: str | None = None) -> tuple[Path, str]:
        key = stable_hash({"stage": name, "version": STAGE_VERSIONS[name], **key_parts})
        with measure(self.options.device) as m:
            folder, cached = self.cache.get_or_build(name, key, build)
        entry = {"stage": name, "class": cls, "key": key, "seconds": round(m.seconds, 3),
                 "peak_memory_mb": round(m.peak_memory_mb, 1), "cached": cached}
        self.stages.append(entry)
        if self.options.on_stage:
            self.options.on_stage(name, entry)
        return folder, key


def examples_hash(examples: list[Example]) -> str:
    """Content hash of captioned images (so a changed dataset never reuses a cached stage)."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.cls}\x00{ex.text}\x00".encode())
        digest.update(np.ascontiguousarray(ex.pixels()).tobytes())
    return digest.hexdigest()


def _save_images(folder: Path, images: np.ndarray, prompts: list[str]) -> None:
    from safetensors.numpy import save_file

    save_file({"images": np.ascontiguousarray(images)}, str(folder / "images.safetensors"))
    (folder / "prompts.json").write_text(json.dumps(prompts))


def _load_images(folder: Path) -> tuple[np.ndarray, list[str]]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "images.safetensors"))["images"], json.loads((folder / "prompts.json").read_text())


def run_cell(cell: Cell, store: ResultStore | None = None, options: RunOptions | None = None) -> dict[str, Any]:
    """Run one cell and return its result record; append it to ``store`` unless it is already there."""
    from advbench.data import examples_to_array, split
    from advbench.model import Model
    from advbench.sampling import SamplingConfig, generate

    options = options or RunOptions()
    cell.validate()
    cell_json = cell.to_json()
    cid = cell_id(cell_json)
    if store is not None:
        existing = next((r for r in store.records() if r["cell_id"] == cid), None)
        if existing is not None:
            _check_not_stale(existing, cell, store)
            return existing
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    run = _CellRun(cell, options, StageCache(options.cache_dir, enabled=options.use_cache))

    defense, attack, domain = cell.defense.build(), cell.attack.build(), cell.domain.build()
    illegal, legal = list(domain.illegal_classes()), list(domain.legal_classes())
    data = split(domain.dataset(), illegal + legal, seed=domain.split_seed(cell.seed))
    base = Model.load(cell.model) if cell.model else domain.base_model()
    model_fp = _model_fingerprint(cell, base)
    sampling_cfg = SamplingConfig(**domain.sampling())

    publisher = PublisherData(illegal={c: data.publisher[c] for c in illegal},
                              legal={c: data.publisher[c] for c in legal})
    protect_parts = {"defense": cell_json["defense"]["name"], "params": cell_json["defense"]["params"],
                     "model": model_fp, "seed": cell.seed,
                     "publisher": examples_hash([e for c in illegal + legal for e in data.publisher[c]])}

    def build_protect(folder: Path) -> None:
        ctx = run.context(folder / "artifacts")
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        defense.protect(base.clone(), publisher, ctx).save(folder)

    protect_dir, protect_key = run.stage("protect", protect_parts, build_protect)
    protected = ProtectedModel.load(protect_dir)
    attack.effective_constraints(protected, cell.threat_model)  # fail before training if it cannot comply

    classes: dict[str, dict[str, Any]] = {}
    metric_names = [domain.primary_metric, *[m for m in domain.extra_metrics if m != domain.primary_metric]]
    metrics = {name: _build_metric(name, domain) for name in metric_names}
    metric_fps = {name: m.fingerprint() for name, m in metrics.items()}
    for role, group in (("illegal", illegal), ("legal", legal)):
        for cls in group:
            adapt_parts = {"protect": protect_key, "attack": cell_json["attack"]["name"],
                           "params": cell_json["attack"]["params"], "threat_model": cell.threat_model,
                           "class": cls, "seed": cell.seed, "data": examples_hash(data.attacker[cls])}

            def build_adapt(folder: Path, cls=cls, role=role) -> None:
                ctx = run.context(folder / "artifacts")
                ctx.work_dir.mkdir(parents=True, exist_ok=True)
                adapted = attack.adapt(protected, AttackData(cls, data.attacker[cls], role, domain.class_noun(cls)), ctx)
                adapted.save(folder / "model")

            adapt_dir, adapt_key = run.stage("adapt", adapt_parts, build_adapt, cls)
            prompts = list(domain.prompts(cls))
            gen_parts = {"adapt": adapt_key, "prompts": prompts, "sampling": sampling_cfg.__dict__,
                         "seed": cell.seed}

            def build_generate(folder: Path, adapt_dir=adapt_dir, prompts=prompts) -> None:
                adapted = Model.load(adapt_dir / "model")
                images = generate(adapted, prompts, sampling_cfg, run.context(folder))
                per_prompt = len(images) // len(prompts)
                _save_images(folder, images, [p for p in prompts for _ in range(per_prompt)])

            gen_dir, gen_key = run.stage("generate", gen_parts, build_generate, cls)
            # references of any size are resized and centre-cropped to the model's resolution
            references = examples_to_array(data.reference[cls], base.resolution)
            score_parts = {"generate": gen_key, "metrics": {n: domain.metric_params(n) for n in metric_names},
                           "metric_fingerprints": metric_fps,
                           "references": examples_hash(data.reference[cls]), "class": cls}

            def build_score(folder: Path, gen_dir=gen_dir, cls=cls, references=references) -> None:
                images, image_prompts = _load_images(gen_dir)
                ctx = run.context(folder)
                values = {n: float(m.score(images, references, image_prompts, ctx, cls=cls))
                          for n, m in metrics.items()}
                (folder / "scores.json").write_text(json.dumps(values))

            score_dir, _ = run.stage("score", score_parts, build_score, cls)
            classes[cls] = {"role": role, "values": json.loads((score_dir / "scores.json").read_text())}

    record = {
        "schema_version": 1,
        "cell_id": cid,
        "config_hash": config_hash(cell_json),
        "cell": cell_json,
        "metrics": _summarize(classes, metrics, domain.primary_metric),
        "defense_info": protected.info,
        "stages": run.stages,
        "total_seconds": round(time.perf_counter() - t0, 3),
        "provenance": provenance(options.device, extra={**_provenance_extra(cell), "model_fingerprint": model_fp,
                                                          "metric_fingerprints": metric_fps}),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    if store is not None:
        store.append(record)
    return record


def _build_metric(name: str, domain: Any) -> Any:
    return PluginSpec("metric", name, domain.metric_params(name)).build()


def _summarize(classes: dict[str, dict[str, Any]], metrics: dict[str, Any], primary: str) -> dict[str, Any]:
    summary: dict[str, Any] = {"primary": primary,
                               "higher_is_better": {n: bool(m.higher_is_better) for n, m in metrics.items()},
                               "classes": classes}
    for role in ("illegal", "legal"):
        rows = [c["values"] for c in classes.values() if c["role"] == role]
        summary[role] = {n: float(np.mean([r[n] for r in rows])) for n in metrics} if rows else {}
    return summary


_FINGERPRINTS: dict[tuple[str | None, str], str] = {}


def _model_fingerprint(cell: Cell, base: Any | None = None) -> str:
    """The cell's base-model fingerprint: of ``base`` when given (and remembered), else loaded once per process."""
    key = (cell.model, stable_hash([cell.domain.name, cell.domain.resolved_params()]))
    if base is not None or key not in _FINGERPRINTS:
        if base is None:
            from advbench.model import Model

            base = Model.load(cell.model) if cell.model else cell.domain.build().base_model()
        _FINGERPRINTS[key] = base.fingerprint()
    return _FINGERPRINTS[key]


def _check_not_stale(record: dict[str, Any], cell: Cell, store: ResultStore) -> None:
    """Refuse to resume over a finished cell whose base model or metric weights differ from today's.

    Records written before fingerprints were recorded carry none and are trusted as they are.
    """
    prov = record.get("provenance", {})
    if "model_fingerprint" not in prov:
        return
    now_model = _model_fingerprint(cell)
    what = None
    if prov["model_fingerprint"] != now_model:
        what = f"base model (fingerprint {prov['model_fingerprint'][:12]}, now {now_model[:12]})"
    else:
        domain = cell.domain.build()
        for name, old in (prov.get("metric_fingerprints") or {}).items():
            now = _build_metric(name, domain).fingerprint()
            if old != now:
                what = f"metric {name!r} (weights {str(old)[:12]}, now {str(now)[:12]})"
                break
    if what is not None:
        raise StaleResultError(f"{store.path} already holds cell {record['cell_id']} ({cell.describe()}), made with "
                               f"another {what}: the model or the shipped tiny world changed since; write to a "
                               f"new --results file, or delete that file's stale records to recompute them")


def _provenance_extra(cell: Cell) -> dict[str, Any]:
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "plugins": {spec.kind: {spec.name: spec.source_version()} for spec in (cell.defense, cell.attack, cell.domain)},
    }
