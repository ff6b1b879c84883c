"""Worst-case cells: the strongest adversary of a suite, per defense and domain, run on the reported seeds.

A :class:`Job` is one defense on one domain (and base and model). Running it (:func:`run_job`) searches the
suite by successive halving on the selection seed (:func:`advbench.halving.worst_case_search`), then runs the
winner on every reported seed as an ordinary cell whose attack is the winning adversary, labelled
``worst-case[<suite>@<version>]``, with ``cell.adversary`` naming the suite (id, version, fingerprint), the
adversary and the selection seed; the record's ``search`` keeps every rung's scores. The undefended model is a
job of its own, so the leaderboard compares the best adversary against the defense with the best adversary
against no defense (threat-model column ``any``: a winner may comply with the defense's constraints or not).

A job whose reported cells are all in the results file is done: nothing is searched again. A killed search
resumes from the stage cache (every rung's adapt, generate and score stages are cached), so only the
interrupted rung's unfinished candidate trains again. Once every reported cell is in the results file, the
losing adversaries' training snapshots (their adapt stages on the selection seed: model weights and optimizer
state at every rung, most of a search's disk) are removed from the cache, since nothing reads them again; their
sampled images and scores stay. ``RunOptions.keep_search_snapshots`` (``--keep-search-snapshots``) keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advbench.cells import Cell, PluginSpec, with_base

BASELINE = "none"


def worst_label(suite: Any) -> str:
    """The attack label of a suite's worst-case cells: ``worst-case[standard@1]``."""
    return f"worst-case[{suite.id}@{suite.version}]"


@dataclass
class Job:
    """One worst-case search and its reported cells: a defense on a domain, base and model, at the given seeds."""

    defense: PluginSpec
    domain: PluginSpec
    seeds: tuple[int, ...]
    base: str = "naive"
    model: str | None = None
    mixed_precision: str = "no"
    metrics: tuple[PluginSpec, ...] = field(default_factory=tuple)

    def describe(self, suite: Any) -> str:
        """One line for ``bench --dry-run`` (and ``--match``): domain, defense vs the suite, the seeds."""
        domain = with_base(self.domain.label or self.domain.name, self.base)
        seeds = ",".join(map(str, self.seeds))
        return f"{domain} | {self.defense.display_label()} vs {worst_label(suite)} | any | seeds {seeds}"

    def cell(self, suite: Any, adversary: Any, seed: int, selection_seed: int) -> Cell:
        """The reported cell of ``adversary`` (one of the suite's) at ``seed``."""
        attack = PluginSpec("attack", adversary.attack.name, dict(adversary.attack.params), worst_label(suite))
        return Cell(self.defense, attack, self.domain, adversary.threat_model, seed, self.model, suite.budgets,
                    self.base, self.mixed_precision, self.metrics,
                    adversary={"suite": suite.id, "version": suite.version, "fingerprint": suite.fingerprint(),
                               "id": adversary.id, "selection_seed": selection_seed})

    def signature(self, suite: Any, selection_seed: int) -> dict[str, Any]:
        """What every reported cell of this job has in common (its cell JSON without attack, threat and seed)."""
        probe = self.cell(suite, suite.adversaries[0], self.seeds[0], selection_seed).to_json()
        return _common(probe)


def _common(cell_json: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cell_json.items() if k not in ("attack", "threat_model", "seed")}
    if "adversary" in out:
        out["adversary"] = {k: v for k, v in out["adversary"].items() if k != "id"}
    return out


def reported(records: list[dict[str, Any]], job: Job, suite: Any, selection_seed: int) -> dict[int, dict[str, Any]]:
    """``{seed: record}`` of the job's reported cells already in ``records``."""
    want = job.signature(suite, selection_seed)
    out = {}
    for rec in records:
        cell = rec["cell"]
        if "adversary" in cell and cell["seed"] in job.seeds and _common(cell) == want:
            out[cell["seed"]] = rec
    return out


def search_summary(result: Any, selection_seed: int, keep: float) -> dict[str, Any]:
    """The record's ``search``: the selection seed, the share kept per rung, every rung's scores and seconds per
    candidate (training from the previous rung, sampling and scoring; stages found in the cache cost ~0), the
    winner, and the steps trained per illegal class."""
    steps, last = 0, 0
    for rung in result.rungs:
        steps += len(rung.scores) * (rung.budget - last)
        last = rung.budget
    return {"selection_seed": selection_seed, "keep": keep, "winner": result.winner, "steps_per_class": steps,
            "seconds": round(sum(sum(r.seconds.values()) for r in result.rungs), 1),
            "rungs": [{"budget": r.budget, "scores": r.scores, "kept": r.kept, "seconds": r.seconds}
                      for r in result.rungs]}


def run_job(job: Job, suite: Any, store: Any, options: Any, selection_seed: int, keep: float = 0.5) -> list[dict[str, Any]]:
    """Search, then run the winner on every seed; the records in seed order. Without a search when some seeds
    are in ``store`` already: the others then get the adversary those records name, so a job never mixes two
    winners. After a search whose reported records are all in ``store``, the losers' adapt snapshots are
    removed from the cache unless ``options.keep_search_snapshots``."""
    from advbench.halving import worst_case_search
    from advbench.runner import run_cell

    done = reported(store.records(), job, suite, selection_seed) if store is not None else {}
    if all(seed in done for seed in job.seeds):
        return [done[seed] for seed in job.seeds]
    result = None
    if done:  # some seeds were reported: the others get the same adversary (and search) as they did
        summary = next(iter(done.values()))["search"]
    else:
        result, _ = worst_case_search(job.defense, job.domain, suite, options, selection_seed, keep, job.base,
                                      job.mixed_precision, job.model)
        summary = search_summary(result, selection_seed, keep)
    adversary = next(a for a in suite.adversaries if a.id == summary["winner"])
    records = []
    for seed in job.seeds:
        rec = done.get(seed) or run_cell(job.cell(suite, adversary, seed, selection_seed), store, options,
                                         annotations={"search": summary})
        records.append(rec)
    if result is not None and store is not None and not options.keep_search_snapshots:
        drop_losers(result, options)
    return records


def drop_losers(result: Any, options: Any) -> int:
    """Remove the adapt-stage entries only the search's losing candidates used; the bytes freed."""
    from advbench.cache import StageCache

    if not options.use_cache:
        return 0
    winner = result.adapt_keys.get(result.winner, set())
    losers = set().union(*(keys for name, keys in result.adapt_keys.items() if name != result.winner)) - winner
    removed = StageCache(options.cache_dir).discard("adapt", losers, "a losing adversary's snapshot")
    return sum(item.bytes for item in removed)


def jobs_for(cells: list[Cell]) -> list[Job]:
    """One job per distinct (domain, base, model, precision, defense) among ``cells``, with their seeds, and the
    undefended job of every domain, base and model even when the cells have none (worst-case MP needs it);
    the undefended jobs first."""
    found: dict[tuple, Job] = {}
    for cell in cells:
        for defense in (cell.defense, PluginSpec("defense", BASELINE)):
            key = (cell.domain.display_label(), cell.domain.label, cell.base, cell.model, cell.mixed_precision,
                   defense.display_label(), repr(sorted(defense.params.items())))
            job = found.setdefault(key, Job(defense, cell.domain, (), cell.base, cell.model, cell.mixed_precision,
                                            cell.metrics))
            if cell.seed not in job.seeds:
                job.seeds = tuple(sorted((*job.seeds, cell.seed)))
    jobs = list(found.values())
    return sorted(jobs, key=lambda j: j.defense.name != BASELINE)  # stable: spec order within each group


def verdict(defended: list[dict[str, Any]], undefended: list[dict[str, Any]]) -> str:
    """One line: the defense's worst-case mitigation power (mean over the seeds, its 95 % interval) and whether it
    mitigates its strongest adversary, in the leaderboard's words, naming the two winning adversaries."""
    from advbench.leaderboard import BASELINE as NONE
    from advbench.leaderboard import build_leaderboard

    df = build_leaderboard([*defended, *undefended])
    row = df[df["defense"] != NONE].iloc[0]
    against = undefended[0]["cell"]["adversary"]["id"]
    return (f"worst case ({defended[0]['cell']['attack']['label']}): MP {row['mitigation_power_mean']:+.3f} "
            f"[95% CI {row['mitigation_power_ci_low']:+.3f}, {row['mitigation_power_ci_high']:+.3f}; "
            f"{row['ci_over']}], strongest adversary {row['adversary']} (undefended: {against}); "
            f"mitigates: {row['mitigates']}")
