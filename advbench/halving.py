"""Successive halving over attacker configurations: the search behind the worst-case adversary (issue 21).

`advbench search` runs it alone (docs/adversaries.md); `bench`/`run` with an adversary suite run it per defense
and domain and then the winner on the reported seeds (:mod:`advbench.worstcase`).

A search gives every candidate the first budget, keeps the stronger half (by the domain's primary metric on the
illegal classes: the better forgery), gives the survivors the next budget, and so on (Jamieson & Talwalkar 2016,
the inner loop of Hyperband). :func:`rung_scores` is one candidate at one rung: it trains the attack only up to
that budget, and a later rung continues from the training state the engine kept there, so no optimizer step is
ever trained twice (``adapt_stage(..., stop_after=...)`` and ``BudgetReached`` in the engine). The candidate
that wins the last rung has its whole curve in the stage cache; ``run_cell`` on it then only scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Rung:
    """One rung: its budget and the score of every candidate that reached it (in the candidates' order)."""

    budget: int
    scores: dict[str, float]
    kept: list[str]
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # wall-clock per candidate (training from the last rung)


@dataclass
class Halving:
    """A finished search: the rungs in order and the winner (the strongest candidate of the last rung)."""

    rungs: list[Rung] = field(default_factory=list)
    #: the adapt-stage cache keys each candidate's training wrote or read (every budget it reached), so the
    #: losers' snapshots can be dropped once the search is reported (:func:`advbench.worstcase.run_job`)
    adapt_keys: dict[str, set[str]] = field(default_factory=dict, compare=False)

    @property
    def winner(self) -> str:
        return self.rungs[-1].kept[0]


def successive_halving(candidates: Sequence[str], budgets: Sequence[int], score: Callable[[str, int], float],
                       higher_is_stronger: bool, keep: float = 0.5) -> Halving:
    """Run the search: ``score(candidate, budget)`` is the attacker's forgery quality at that budget.

    At each budget but the last, the ``ceil(keep * n)`` strongest of the ``n`` candidates still in go on; at the
    last, the strongest one wins. Ties go to the candidate listed first, so the search is deterministic. A NaN
    score is weakest (an attack that diverged is no threat). Each candidate is scored at most once per budget.
    """
    names = list(candidates)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"candidates must be distinct and non-empty, got {names}")
    budgets = list(budgets)
    if not budgets or any(b <= 0 for b in budgets) or budgets != sorted(set(budgets)):
        raise ValueError(f"budgets must be strictly increasing positive numbers, got {budgets}")
    if not 0 < keep < 1:
        raise ValueError(f"keep must be a fraction between 0 and 1, got {keep}")
    order = {name: i for i, name in enumerate(names)}

    def strength(name: str, scores: dict[str, float]) -> tuple[float, int]:
        value = scores[name]
        rank = -math.inf if math.isnan(value) else (value if higher_is_stronger else -value)
        return -rank, order[name]  # sorted ascending: strongest first, then the first listed

    result, alive = Halving(), names
    for i, budget in enumerate(budgets):
        scores, seconds = {}, {}
        for name in alive:
            t0 = time.perf_counter()
            scores[name] = float(score(name, budget))
            seconds[name] = round(time.perf_counter() - t0, 3)
        ranked = sorted(alive, key=lambda n: strength(n, scores))
        last = i == len(budgets) - 1
        alive = ranked[:1] if last else ranked[:max(1, math.ceil(keep * len(ranked)))]
        result.rungs.append(Rung(budget, scores, alive, seconds))
    return result


#: Seeds of the search's cells start here; the seeds that are reported stay below it, so the adversary is
#: chosen on other training and sampling noise than the numbers published for it (no winner's curse).
SELECTION_SEED = 10_000


@dataclass
class RungScore:
    """One cell at one rung: ``values`` per illegal class, and the domain's primary metric and its direction."""

    values: dict[str, dict[str, float]]
    primary: str
    higher_is_better: bool
    adapt_keys: tuple[str, ...] = ()  # the adapt-stage entries behind it: every budget up to this one, per class

    @property
    def illegal(self) -> float:
        """The primary metric's mean over the illegal classes: the forgery quality the search ranks by."""
        return float(sum(v[self.primary] for v in self.values.values()) / len(self.values))


def rung_scores(cell: Any, budget: int, options: Any = None, validate: bool = True) -> RungScore:
    """The cell's illegal classes with the attack stopped at ``budget`` (one of the cell's budgets), continuing
    from the state an earlier rung left, generated and scored there; stages go to the options' cache as usual.
    ``validate=False`` when the caller validated the cell already (a search does, once, before any rung)."""
    from advbench.cache import StageCache
    from advbench.runner import RunOptions, _CellRun, adapt_stage, generate_stage, protect_stage, score_stage

    options = options or RunOptions()
    if validate:
        cell.validate()
    run = _CellRun(cell, options, StageCache(options.cache_dir, enabled=options.use_cache))
    run.prepare_base()
    protected, protect_key = protect_stage(run)
    out, keys = {}, []
    for role, cls in run.classes():
        if role != "illegal":
            continue
        snapshots = adapt_stage(run, protected, protect_key, role, cls, stop_after=budget)
        keys += [key for _, _, key in snapshots]
        reached, adapt_dir, adapt_key = snapshots[-1]
        gen_dir, gen_key = generate_stage(run, adapt_dir / "model", {"adapt": adapt_key}, cls, reached)
        out[cls] = score_stage(run, gen_dir, gen_key, cls, reached)["values"]
    primary = run.domain.primary_metric
    return RungScore(out, primary, bool(run.metrics[primary].higher_is_better), tuple(keys))


def worst_case_search(defense: Any, domain: Any, suite: Any, options: Any = None, seed: int = SELECTION_SEED,
                      keep: float = 0.5, base: str = "naive", mixed_precision: str = "no", model: str | None = None
                      ) -> tuple[Halving, dict[str, Any]]:
    """Successive halving of ``suite``'s adversaries (:mod:`advbench.adversaries`) against ``defense`` on
    ``domain`` with selection seed ``seed``: ``(the search, {adversary id: its cell})``. The strongest adversary
    is the one whose forgery of the illegal classes is best (the domain's primary metric and direction)."""
    from advbench.cells import Cell
    from advbench.staleness import build_metric

    if seed < SELECTION_SEED:
        raise ValueError(f"selection seed {seed} must be >= {SELECTION_SEED}: below it are the reported seeds")
    cells = {a.id: Cell(defense, a.attack, domain, a.threat_model, seed, model, suite.budgets, base,
                        mixed_precision) for a in suite.adversaries}
    for n, cell in enumerate(cells.values()):  # every mistake before any work; data and model checked once
        cell.validate(deep=n == 0)

    adapt_keys: dict[str, set[str]] = {}

    def score(adversary: str, budget: int) -> float:
        found = rung_scores(cells[adversary], budget, options, validate=False)
        adapt_keys.setdefault(adversary, set()).update(found.adapt_keys)
        return found.illegal

    built = domain.build()  # the direction of the primary metric, as the runner builds it
    stronger_high = bool(build_metric(built.primary_metric, built).higher_is_better)
    result = successive_halving(list(cells), suite.budgets, score, stronger_high, keep)
    result.adapt_keys = adapt_keys
    return result, cells
