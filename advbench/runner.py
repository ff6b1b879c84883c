"""Run a cell: protect → adapt (per attacked class) → generate → score, every stage cached by content hash.

The defense sees only the publisher's share of the data, each attack only the attacker's share of the class it
attacks, and the metrics compare generated images with the held-out reference images.

An anytime cell (``cell.budgets``) trains each class once, to its last budget; at every earlier budget the
engine hands over a snapshot of what the attack trains, which becomes that budget's adapt stage, and the
generate and score stages then run per budget. Each budget's adapt stage also keeps the training state until
the class is finished, so a run killed between two budgets continues from the last one it reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advbench.cache import StageCache, stable_hash
from advbench.cells import Cell
from advbench.interfaces import Anytime, AttackData, BudgetReached, Context, Example, ProtectedModel, PublisherData
from advbench.numerics import device_type
from advbench.profiling import measure
from advbench.provenance import provenance
from advbench.results import ResultStore, build_record, cell_id
from advbench.staleness import build_metric, check_not_stale, encoder_provenance, model_fingerprint
from advbench.thumbnails import PER_STRIP, class_thumbnails, record_thumbnails
from advbench.validation import added_metrics

# Bump a stage's version when its output format or semantics change, so old cache entries are not reused.
STAGE_VERSIONS = {"expose": 1, "protect": 1, "adapt": 1, "generate": 1, "score": 2}  # score 2: per-image values
TRAIN_STATE = "train_state.pt"  # in an intermediate budget's adapt stage, until its class is finished


@dataclass
class RunOptions:
    """How to run cells. Mixed precision is part of the cell; the device type changes numbers too, so it joins
    every stage key (when not cpu) and a finished record made on another device type is not reused."""

    cache_dir: str | Path | None = None
    use_cache: bool = True
    device: str = "cpu"
    progress: bool = True
    on_stage: Callable[[str, dict[str, Any]], None] | None = None
    keep_search_snapshots: bool = False  # a worst-case job keeps its losing adversaries' adapt snapshots


@dataclass
class _CellRun:
    """One cell being run: its plugins, data, base model and metrics, resolved once."""

    cell: Cell
    options: RunOptions
    cache: StageCache
    stages: list[dict[str, Any]] = field(default_factory=list)
    encoder_fp: str | None = None  # the defense-side encoder's fingerprint, set by protect_stage when one is used

    def __post_init__(self):
        from advbench.data import split
        from advbench.model import Model
        from advbench.sampling import SamplingConfig

        cell = self.cell
        self.json = cell.to_json()
        self.defense, self.attack, self.domain = cell.defense.build(), cell.attack.build(), cell.domain.build()
        self.budgets = cell.resolved_budgets()
        self.illegal, self.legal = list(self.domain.illegal_classes()), list(self.domain.legal_classes())
        self.data = split(self.domain.dataset(), self.illegal + self.legal, seed=self.domain.split_seed(cell.seed))
        self.naive = Model.load(cell.model) if cell.model else self.domain.base_model()
        self.model_fp = model_fingerprint(cell, self.naive)
        self.base, self.base_id, self.base_facts = self.naive, self.model_fp, {"base": "naive"}
        self.sampling = SamplingConfig(**self.domain.sampling())
        names = [self.domain.primary_metric, *[m for m in self.domain.extra_metrics if m != self.domain.primary_metric]]
        self.metrics = {name: build_metric(name, self.domain) for name in names}
        # what the score stage's key holds per metric: the domain's parameters, an added metric's own (resolved)
        self.metric_params = {name: self.domain.metric_params(name) for name in names}
        self.metrics.update(added_metrics(self.domain, cell.metrics))
        self.metric_params.update({spec.name: spec.resolved_params() for spec in cell.metrics})
        self.metric_fps = {name: m.fingerprint() for name, m in self.metrics.items()}

    def prepare_base(self) -> None:
        """Build (or load) the exposed base when the cell asks for it; protect stages then start from it."""
        if self.cell.base == "exposed":
            from advbench.exposure import expose_stage

            self.base, key, self.base_facts = expose_stage(self)
            self.base_id = f"exposed:{key}"

    def classes(self) -> list[tuple[str, str]]:
        return [("illegal", c) for c in self.illegal] + [("legal", c) for c in self.legal]

    def context(self, work_dir: Path, **extra: Any) -> Context:
        return Context(seed=self.cell.seed, device=self.options.device,
                       mixed_precision=self.cell.mixed_precision, threat_model=self.cell.threat_model,
                       work_dir=work_dir, progress=self.options.progress,
                       cache_dir=self.cache.root if self.cache.enabled else None, **extra)

    def key(self, name: str, parts: dict[str, Any]) -> str:
        # precision and device type change the numbers; absent at their defaults so older cache entries still match
        numerics = {**({"mixed_precision": self.cell.mixed_precision} if self.cell.mixed_precision != "no" else {}),
                    **({"device_type": dtype} if (dtype := device_type(self.options.device)) != "cpu" else {})}
        return stable_hash({"stage": name, "version": STAGE_VERSIONS[name], **parts, **numerics})

    def log_stage(self, name: str, cls: str | None, budget: int | None, key: str, seconds: float, peak_mb: float,
                  cached: bool, **extra: Any) -> None:
        """Record one stage entry (the record's ``stages[*]``) and report it to ``on_stage``."""
        entry = {"stage": name, "class": cls, **({"budget": budget} if budget is not None else {}), "key": key,
                 "seconds": round(seconds, 3), "peak_memory_mb": round(peak_mb, 1), "cached": cached, **extra}
        self.stages.append(entry)
        if self.options.on_stage:
            self.options.on_stage(name, entry)

    def stage(self, name: str, key: str, build: Callable[[Path], None], cls: str | None = None,
              budget: int | None = None) -> Path:
        with measure(self.options.device) as m:
            folder, cached = self.cache.get_or_build(name, key, build)
        self.log_stage(name, cls, budget, key, m.seconds, m.peak_memory_mb, cached)
        return folder


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


# ---------------------------------------------------------------------------------------------- stages
def protect_stage(run: _CellRun) -> tuple[ProtectedModel, str]:
    """The defense on the publisher's share; the attack is checked against its constraints before training.

    A defense with ``uses_encoder`` also gets the domain's defense-side encoder, whose fingerprint then joins the
    key; other defenses' keys are exactly what they were before encoders existed, so their cache stays valid.
    """
    encoder = run.domain.defense_encoder() if run.defense.uses_encoder else None
    run.encoder_fp = encoder.fingerprint() if encoder is not None else None
    publisher = PublisherData(illegal={c: run.data.publisher[c] for c in run.illegal},
                              legal={c: run.data.publisher[c] for c in run.legal},
                              nouns={c: run.domain.class_noun(c) for _, c in run.classes()},
                              prompts={c: list(run.domain.prompts(c)) for _, c in run.classes()}, encoder=encoder)
    key = run.key("protect", {"defense": run.json["defense"]["name"], "params": run.json["defense"]["params"],
                              "model": run.base_id, "seed": run.cell.seed,
                              "publisher": examples_hash([e for _, c in run.classes() for e in run.data.publisher[c]]),
                              "words": {"nouns": publisher.nouns, "prompts": publisher.prompts},
                              **({"encoder": run.encoder_fp} if encoder is not None else {})})

    def build(folder: Path) -> None:
        ctx = run.context(folder / "artifacts")
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        run.defense.protect(run.base.clone(), publisher, ctx).save(folder)

    protected = ProtectedModel.load(run.stage("protect", key, build))
    run.attack.effective_constraints(protected, run.cell.threat_model)  # fail before training if it cannot comply
    return protected, key


def adapt_stage(run: _CellRun, protected: ProtectedModel, protect_key: str, role: str, cls: str,
                stop_after: int | None = None) -> list[tuple[int | None, Path, str]]:
    """``[(budget, folder, key)]``: the adapted model of ``cls`` at every budget, from one attack run.

    The last budget's key is the key a one-budget cell of the same attack has, so the two share that stage.
    With ``stop_after`` (one of the cell's budgets) the attack runs only that far (or on from the last kept
    training state to there) and the budgets up to it are returned; the training states are kept, so a later
    call with a larger ``stop_after`` trains only the steps after it (a rung of successive halving).
    """
    from advbench.model import Model

    parts = {"protect": protect_key, "attack": run.json["attack"]["name"], "params": run.json["attack"]["params"],
             "threat_model": run.cell.threat_model, "class": cls, "seed": run.cell.seed,
             "data": examples_hash(run.data.attacker[cls])}
    budgets = list(run.budgets or [None])
    final = budgets[-1]
    if stop_after is not None and stop_after not in budgets:
        raise ValueError(f"stop_after={stop_after} is not one of the cell's budgets {budgets}")
    partial = stop_after is not None and stop_after != final
    shown = [b for b in budgets if b <= stop_after] if partial else budgets
    keys = {b: run.key("adapt", parts if b == final else {**parts, "budget": b}) for b in budgets}
    todo = [b for b in budgets if not run.cache.has("adapt", keys[b])]
    data = AttackData(cls, run.data.attacker[cls], role, run.domain.class_noun(cls))
    clock = {"last": time.perf_counter(), "resumed_from": None}
    entries: dict[int | None, dict[str, Any]] = {}

    def save(budget: int, snapshot: Model, state: dict[str, Any]) -> None:
        def build(folder: Path) -> None:
            import torch

            snapshot.save(folder / "model")
            torch.save(state, folder / TRAIN_STATE)  # our own file, read back with weights_only=True
            (folder / "anytime.json").write_text(json.dumps({"budget": budget, "exact": bool(state["exact"])}))

        run.cache.get_or_build("adapt", keys[budget], build)
        now = time.perf_counter()
        entries[budget] = {"seconds": now - clock["last"], "cached": False}
        clock["last"] = now

    def train(folder: Path, keep: bool = True) -> None:
        resume = _resume_state(run, keys, budgets, todo)
        clock["resumed_from"] = resume["step"] if resume else None
        anytime = (Anytime(tuple(b for b in todo if b != final), save, resume, stop_after if partial else None)
                   if run.budgets else None)
        ctx = run.context(folder / "artifacts", anytime=anytime)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        adapted = run.attack.adapt(protected, data, ctx)
        if keep:
            adapted.save(folder / "model")
            (folder / "anytime.json").write_text(json.dumps({"budget": final, "exact": True}))
            entries[final] = {"seconds": time.perf_counter() - clock["last"], "cached": False}

    with measure(run.options.device) as m:
        if partial:
            if stop_after in todo:  # train to stop_after only; the engine raises BudgetReached once it is saved
                with tempfile.TemporaryDirectory() as scratch, contextlib.suppress(BudgetReached):
                    train(Path(scratch), keep=False)
        elif final in todo:
            run.cache.get_or_build("adapt", keys[final], train)
        elif todo:  # only an earlier budget is missing: run the attack again for its snapshots
            with tempfile.TemporaryDirectory() as scratch:
                train(Path(scratch), keep=False)
    for b in shown:
        entry = entries.get(b, {"seconds": 0.0, "cached": True})
        run.log_stage("adapt", cls, b, keys[b], entry["seconds"], m.peak_memory_mb, entry["cached"],
                      **({"resumed_from": clock["resumed_from"]} if clock["resumed_from"] else {}))
    for b in budgets if not partial else []:  # the class is finished: the states were only needed to resume it
        (run.cache.path("adapt", keys[b]) / TRAIN_STATE).unlink(missing_ok=True)
    return [(b, run.cache.path("adapt", keys[b]), keys[b]) for b in shown]


def _resume_state(run: _CellRun, keys: dict, budgets: list, todo: list) -> dict[str, Any] | None:
    """The training state of the last finished budget before the first missing one, if it was kept."""
    import torch

    if not run.budgets or not todo:
        return None
    done = [b for b in budgets if b not in todo and b < todo[0]]
    for b in reversed(done):
        path = run.cache.path("adapt", keys[b]) / TRAIN_STATE
        if path.exists():
            return torch.load(path, weights_only=True)
    return None


def generate_stage(run: _CellRun, model_dir: Path, source: dict[str, str], cls: str, budget: int | None
                   ) -> tuple[Path, str]:
    """Images of the class's evaluation prompts from the model in ``model_dir``: the adapted model at one budget
    (``source = {"adapt": its key}``), or the protected model before any attack (``{"protected": its key}``)."""
    from advbench.model import Model
    from advbench.sampling import generate

    prompts = list(run.domain.prompts(cls))
    key = run.key("generate", {**source, "prompts": prompts, "sampling": run.sampling.__dict__, "seed": run.cell.seed})

    def build(folder: Path) -> None:
        images = generate(Model.load(model_dir), prompts, run.sampling, run.context(folder))
        per_prompt = len(images) // len(prompts)
        _save_images(folder, images, [p for p in prompts for _ in range(per_prompt)])

    return run.stage("generate", key, build, cls, budget), key


def score_stage(run: _CellRun, gen_dir: Path, gen_key: str, cls: str, budget: int | None) -> dict[str, Any]:
    """Every metric of the domain, and the cell's added ones, on one class's generated images, against its
    held-out references: ``{"values": {metric: value}, "per_image": {primary: [value per image]}}``
    (``per_image`` when the primary metric is a mean over images, :meth:`Metric.per_image`)."""
    from advbench.data import examples_to_array

    key = run.key("score", {"generate": gen_key, "metrics": run.metric_params,
                            "metric_fingerprints": run.metric_fps,
                            "references": examples_hash(run.data.reference[cls]), "class": cls})

    def build(folder: Path) -> None:
        images, image_prompts = _load_images(gen_dir)
        # references of any size are resized and centre-cropped to the model's resolution
        references = examples_to_array(run.data.reference[cls], run.base.resolution)
        ctx = run.context(folder)
        values = {n: float(m.score(images, references, image_prompts, ctx, cls=cls)) for n, m in run.metrics.items()}
        (folder / "scores.json").write_text(json.dumps(values))
        primary = run.domain.primary_metric
        each = run.metrics[primary].per_image(images, references, image_prompts, ctx, cls=cls)
        if each is not None:
            (folder / "per_image.json").write_text(json.dumps({primary: [float(v) for v in each]}))

    folder = run.stage("score", key, build, cls, budget)
    out: dict[str, Any] = {"values": json.loads((folder / "scores.json").read_text())}
    if (folder / "per_image.json").exists():
        out["per_image"] = json.loads((folder / "per_image.json").read_text())
    return out


# ------------------------------------------------------------------------------------------------ cells
def run_cell(cell: Cell, store: ResultStore | None = None, options: RunOptions | None = None,
             annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one cell and return its result record; append it to ``store`` unless it is already there.
    ``annotations`` are extra top-level record keys that are outputs, not configuration (a worst-case cell's
    ``search``): they join no cell id."""
    options = options or RunOptions()
    cell.validate()
    if store is not None:
        cid = cell_id(cell.to_json())
        existing = next((r for r in store.records() if r["cell_id"] == cid), None)
        if existing is not None:
            check_not_stale(existing, cell, store.path, options.device)
            return existing
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    run = _CellRun(cell, options, StageCache(options.cache_dir, enabled=options.use_cache))
    run.prepare_base()
    protected, protect_key = protect_stage(run)
    curve: dict[int | None, dict[str, Any]] = {b: {} for b in (run.budgets or [None])}
    before: dict[str, Any] = {}
    thumbnails: dict[str, Any] = {}
    for role, cls in run.classes():
        start_dir = None
        if run.budgets and len(run.budgets) > 1:  # a curve's start: the protected model before any attack
            start_dir, gen_key = generate_stage(run, run.cache.path("protect", protect_key) / "model",
                                                {"protected": protect_key}, cls, 0)
            before[cls] = {"role": role, **score_stage(run, start_dir, gen_key, cls, 0)}
        for budget, adapt_dir, adapt_key in adapt_stage(run, protected, protect_key, role, cls):
            gen_dir, gen_key = generate_stage(run, adapt_dir / "model", {"adapt": adapt_key}, cls, budget)
            curve[budget][cls] = {"role": role, **score_stage(run, gen_dir, gen_key, cls, budget)}
        thumbnails[cls] = _class_thumbnails(run, role, cls, gen_dir, start_dir)
    record = build_record(
        run.json, list(curve.items()), run.domain.primary_metric,
        {n: bool(m.higher_is_better) for n, m in run.metrics.items()}, _anytime_facts(run), before or None,
        thumbnails=record_thumbnails(thumbnails), defense_info=protected.info, stages=run.stages,
        total_seconds=round(time.perf_counter() - t0, 3),
        provenance=provenance(options.device, extra={**_provenance_extra(cell), "domain_version": run.domain.version,
                                                     "model_fingerprint": run.model_fp,
                                                     "metric_fingerprints": run.metric_fps, "base": run.base_facts,
                                                     **encoder_provenance(run.encoder_fp)}),
        started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(), **(annotations or {}))
    if store is not None:
        store.append(record)
    return record


def _class_thumbnails(run: _CellRun, role: str, cls: str, final_dir: Path, start_dir: Path | None) -> dict[str, Any]:
    """A class's thumbnail strips (:mod:`advbench.thumbnails`), read from its generate stages (at the final budget
    and, for a curve, before any attack), and its held-out references at the model's resolution. Outputs only:
    they join no stage key and no cell id."""
    from advbench.data import examples_to_array

    images, prompts = _load_images(final_dir)
    start = _load_images(start_dir)[0] if start_dir is not None else None
    references = examples_to_array(run.data.reference[cls][:PER_STRIP], run.base.resolution)
    return class_thumbnails(role, prompts[0], images, start, reference=references)


def _anytime_facts(run: _CellRun) -> dict[str, Any]:
    """``anytime`` of the record: the budget parameter, and whether every snapshot equals a shorter run."""
    if not run.budgets:
        return {"budget_param": None, "exact": True, "note": "one evaluation after the whole attack"}
    exact = True
    for stage in (s for s in run.stages if s["stage"] == "adapt"):
        facts = run.cache.path("adapt", stage["key"]) / "anytime.json"
        if facts.exists():  # the last budget's stage may predate anytime cells
            exact = exact and json.loads(facts.read_text())["exact"]
    note = ("each budget's snapshot equals a run of that many steps (constant learning rate)" if exact else
            "the learning-rate schedule spans the whole run, so a snapshot at budget b saw other rates than a "
            "run of b steps would")
    return {"budget_param": "steps", "exact": exact, "note": note}


def _provenance_extra(cell: Cell) -> dict[str, Any]:
    import torch

    plugins = {spec.kind: {spec.name: spec.source_version()} for spec in (cell.defense, cell.attack, cell.domain)}
    if cell.metrics:  # added metrics (--metric) may come from third-party plugins: record which version scored
        plugins["metric"] = {spec.name: spec.source_version() for spec in cell.metrics}
    # The CPU kernels torch dispatches to (AVX2, AVX512, ...) order float sums differently: recorded beside the CPU.
    return {"torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "plugins": plugins}
