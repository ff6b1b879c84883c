"""The small abstract classes every plugin implements, and the data that flows between them.

Importing this module never imports torch: plugins are registered and listed without it.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from advbench.errors import ConstraintError, DataError
from advbench.params import NoParams

if TYPE_CHECKING:
    from advbench.model import Model

THREAT_MODELS = ("compliant", "unconstrained")
# What a metric judges (``Metric.measures``): the illegal concept kinds (identity: a person's face; style: an
# artist's style; nudity: explicit content), and the generic ones: alignment to the prompt, fidelity of the image
# distribution (FID/KID), similarity to the class's references (LPIPS, DINO), detection (a face is found at all).
MEASURES = ("identity", "style", "nudity", "alignment", "fidelity", "similarity", "detection")


# --------------------------------------------------------------------------------------------- data
@dataclass
class Example:
    """One captioned image of a class: ``image`` (uint8 H×W×3) in memory, or a ``path`` to load it from."""

    text: str
    cls: str
    image: np.ndarray | None = None
    path: str | None = None

    def pixels(self) -> np.ndarray:
        if self.image is None:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(self.path) as img:
                    self.image = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"cannot read image {self.path}: {exc}; replace or remove it") from None
        return self.image


@dataclass
class PublisherData:
    """What a defense may see: the publisher's share of each illegal and legal class, and their words.

    ``nouns`` maps each class to the domain's coarse class word ("person", "painting"; "" when the domain has
    none) and ``prompts`` to the domain's evaluation prompts of it: a concept-editing defense (UCE) edits the
    words, not the images. The runner fills both from the domain.
    """

    illegal: dict[str, list[Example]]
    legal: dict[str, list[Example]]
    nouns: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, list[str]] = field(default_factory=dict)
    encoder: ImageEncoder | None = None  # the domain's defense-side encoder, for a defense with uses_encoder

    def noun(self, cls: str) -> str:
        return self.nouns.get(cls, "")


@dataclass
class AttackData:
    """What an attack sees for one attacked class: the attacker's share of that class only."""

    cls: str
    examples: list[Example]
    role: str  # "illegal" or "legal"
    class_noun: str = ""  # the domain's coarse class word ("person", "painting"), e.g. for DreamBooth


# -------------------------------------------------------------------------------------- constraints
@dataclass
class Constraint:
    """A fine-tuning constraint a defense imposes through the publisher's fine-tuning API."""

    kind: ClassVar[str] = "constraint"

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class FreezeMask(Constraint):
    """Tensors of one model component (default the UNet) that the attacker may not change, by parameter name."""

    kind: ClassVar[str] = "freeze_mask"
    frozen: dict[str, bool]
    component: str = "unet"

    def frozen_names(self) -> list[str]:
        return sorted(n for n, f in self.frozen.items() if f)

    def ratio(self) -> float:
        return sum(self.frozen.values()) / max(len(self.frozen), 1)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "component": self.component, "frozen": dict(sorted(self.frozen.items()))}


CONSTRAINT_TYPES: dict[str, type[Constraint]] = {"freeze_mask": FreezeMask}


def constraint_from_json(data: dict[str, Any]) -> Constraint:
    kind = data.get("kind")
    if kind not in CONSTRAINT_TYPES:
        raise DataError(f"unknown constraint kind {kind!r}; known: {', '.join(CONSTRAINT_TYPES)}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    return CONSTRAINT_TYPES[kind](**fields)


@dataclass
class ProtectedModel:
    """A defense's output: (possibly new) weights plus constraints the compliant attacker honours."""

    model: Model
    constraints: list[Constraint] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for the result record

    def constraint(self, kind: str) -> Constraint | None:
        return next((c for c in self.constraints if c.kind == kind), None)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save(folder / "model")
        (folder / "constraints.json").write_text(json.dumps([c.to_json() for c in self.constraints]))
        (folder / "info.json").write_text(json.dumps(self.info, sort_keys=True))

    @classmethod
    def load(cls, folder: str | Path) -> ProtectedModel:
        from advbench.model import Model

        folder = Path(folder)
        constraints = [constraint_from_json(c) for c in json.loads((folder / "constraints.json").read_text())]
        info = json.loads((folder / "info.json").read_text())
        return cls(Model.load(folder / "model"), constraints, info)


# ------------------------------------------------------------------------------------------ context
@dataclass
class Anytime:
    """Snapshots of one attack run at intermediate budgets (the runner's anytime evaluation).

    The fine-tuning engine calls ``save(budget, snapshot, state)`` right after optimizer step ``budget`` (for
    each budget below the run's last step): ``snapshot`` is the adapted model as the attack would return it
    at that point (its ``export``), ``state`` the training state from which :func:`advbench.finetune.finetune`
    can continue exactly (trainable tensors, optimizer, LR schedule, generator, batcher); ``save`` must write
    both before it returns. ``resume``, when set, is such a state: training continues from its step instead
    of starting over (a cell killed between two budgets does not redo the first).
    """

    budgets: tuple[int, ...]
    save: Any  # Callable[[int, Model, dict[str, Any]], None]
    resume: dict[str, Any] | None = None
    stop_after: int | None = None  # one of ``budgets``: raise BudgetReached once its snapshot is saved


class BudgetReached(Exception):
    """Raised by the fine-tuning engine right after saving the snapshot of ``Anytime.stop_after``: the attack
    stops there (one rung of a successive-halving search) and a later run continues from that saved state."""


@dataclass
class Context:
    """Run-time facts a plugin may use; plugins never pick devices, seeds or folders themselves."""

    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", "mps"
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (accelerate's names)
    threat_model: str = "compliant"
    work_dir: Path = field(default_factory=lambda: Path("."))  # this stage's folder for artifacts
    progress: bool = True
    cache_dir: Path | None = None  # the run's stage-cache root, for sub-stages a plugin caches itself (or None)
    anytime: Anytime | None = None  # set by the runner in the adapt stage of an anytime cell

    def log(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{message}[/dim]")


# ------------------------------------------------------------------------------------------ plugins
class Plugin:
    """Base of all plugins: a ``Params`` dataclass and an instance built from validated params."""

    name: ClassVar[str] = ""  # set by the registry
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()


class Defense(Plugin, abc.ABC):
    """Publisher side: protect a pre-trained model using only the publisher's share of the data.

    ``follows_attack`` names a parameter that, set to ``"matched"``, takes the name of the cell's attack (a
    defense that simulates the attacker, like IMMA, then simulates the very attack it faces).
    """

    follows_attack: ClassVar[str | None] = None
    uses_encoder: ClassVar[bool] = False  # True: PublisherData.encoder is the domain's defense_encoder()

    @abc.abstractmethod
    def protect(self, model: Model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        """Return the protected model: new weights and/or constraints."""


class Attack(Plugin, abc.ABC):
    """Attacker side: adapt a protected model on the attacker's share of one class.

    An attack that trains through :func:`advbench.finetune.finetune` (passing ``ctx`` and, where the adapted
    model is not simply the training model, an ``export`` function) declares ``anytime = True``: the runner
    then evaluates one run at several budgets of its ``steps`` parameter.
    """

    constraints_understood: ClassVar[frozenset[str]] = frozenset()
    anytime: ClassVar[bool] = False

    def default_budgets(self) -> tuple[int, ...]:
        """The budgets an anytime cell scores when none are given: ``steps``/8, /4, /2 and ``steps``."""
        steps = int(self.params.steps)
        return tuple(sorted({max(1, steps // 2 ** k) for k in range(3, -1, -1)}))

    def effective_constraints(self, protected: ProtectedModel, threat_model: str) -> list[Constraint]:
        """The constraints this attack must honour: none if unconstrained, else all (each must be understood)."""
        if threat_model == "unconstrained":
            return []
        for c in protected.constraints:
            if c.kind not in self.constraints_understood:
                raise ConstraintError(
                    f"attack '{self.name}' cannot honour constraint '{c.kind}' under the compliant threat model; "
                    f"choose an attack that understands it or run with --threat-model unconstrained"
                )
        return list(protected.constraints)

    @abc.abstractmethod
    def adapt(self, protected: ProtectedModel, data: AttackData, ctx: Context) -> Model:
        """Return the adapted model; honour ``self.effective_constraints(protected, ctx.threat_model)``."""


class Dataset(abc.ABC):
    """Captioned images grouped into named classes (see :mod:`advbench.data` for the implementation)."""

    @abc.abstractmethod
    def classes(self) -> list[str]: ...

    @abc.abstractmethod
    def examples(self, cls: str) -> list[Example]: ...


class DatasetSource(Plugin, abc.ABC):
    """A plugin that loads a :class:`Dataset` (an image folder, a procedural generator, ...)."""

    @abc.abstractmethod
    def load(self) -> Dataset: ...


class Metric(Plugin, abc.ABC):
    """Scores one class's generated images; a lower or higher value means a better forgery, as declared."""

    higher_is_better: ClassVar[bool] = True
    measures: ClassVar[str] = ""  # what it judges, one of MEASURES ("" when a plugin does not say)
    recognition: ClassVar[bool] = False  # a share in [0, 1] of images recognised as the class (a forgery's hit rate)
    needs_references: ClassVar[bool] = True
    needs_prompts: ClassVar[bool] = False
    min_images: ClassVar[int] = 1  # generated images per class below which the score is undefined
    min_references: ClassVar[int] = 1  # reference images per class (when it needs references), likewise

    @abc.abstractmethod
    def score(self, images: np.ndarray, references: np.ndarray | None, prompts: list[str] | None,
              ctx: Context, cls: str | None = None) -> float:
        """Score one class's generated images.

        ``images`` and ``references`` are uint8 arrays N×H×W×3; ``prompts`` align with ``images``; ``cls`` is
        the class the images were generated for (recognition metrics compare against the other classes).
        """

    def per_image(self, images: np.ndarray, references: np.ndarray | None, prompts: list[str] | None,
                  ctx: Context, cls: str | None = None) -> np.ndarray | None:
        """One value per generated image whose mean is :meth:`score` (a mean-over-images metric), or None (the
        default) for a set statistic such as KID. The runner records the primary metric's per-image values, so
        confidence intervals can resample the images as well as the seeds (:mod:`advbench.bootstrap`)."""
        return None

    def fingerprint(self) -> str | None:
        """Identity of the weights this metric scores with (e.g. a sha256 of its judge's files), or None.

        It joins the score stage's cache key and the record's provenance, so retrained weights never reuse
        old scores and a resumed benchmark notices results scored by other weights. None (the default) means
        the metric's params identify it completely.
        """
        return None

    def check_domain(self, domain: Domain) -> str | None:
        """Why this metric's numbers would mean nothing on ``domain`` (e.g. judges trained for another world),
        or None when it can score it. The cell is refused before any work when this returns a reason."""
        return None


class ImageEncoder(abc.ABC):
    """An image encoder a defense may use (Dark Miner's verifier), supplied by the domain. It is never one of the
    judges that score the benchmark: a defense that optimised against its own exam would flatter itself."""

    @abc.abstractmethod
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×3 images → float32 N×D embeddings, each row of unit L2 norm."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A content hash of the encoder (weights and preprocessing); it joins the protect stage's key."""


class Domain(Plugin, abc.ABC):
    """A benchmark scenario: a dataset, its illegal and legal classes, prompts, metrics and default model."""

    primary_metric: ClassVar[str] = ""
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str | None] = None  # data/world version recorded in provenance; records of two never mix

    @abc.abstractmethod
    def dataset(self) -> Dataset: ...

    @abc.abstractmethod
    def illegal_classes(self) -> list[str]: ...

    @abc.abstractmethod
    def legal_classes(self) -> list[str]: ...

    @abc.abstractmethod
    def prompts(self, cls: str) -> list[str]:
        """Evaluation prompts of ``cls``."""

    @abc.abstractmethod
    def base_model(self) -> Model:
        """The pre-trained model this domain is benchmarked on by default."""

    def metric_params(self, metric: str) -> dict[str, Any]:
        """Parameters to build the named metric with (e.g. the judge weights that fit this domain)."""
        return {}

    def model_folder(self) -> str | None:
        """The local folder :meth:`base_model` loads, checked before any work; None when it is built in."""
        return None

    def class_noun(self, cls: str) -> str:
        """The coarse class word of ``cls`` ("person", "painting"), used by DreamBooth's class prompts."""
        return ""

    def exposure(self) -> dict[str, Any]:
        """Fine-tuning settings of this domain's exposed base (``FinetuneConfig`` keys) over the default recipe
        :data:`advbench.exposure.EXPOSURE`; ``{}`` keeps it."""
        return {}

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :class:`advbench.sampling.SamplingConfig` for this domain's evaluation."""
        return {}

    def split_seed(self, seed: int) -> int:
        """The seed of the publisher/attacker/reference split for a cell seed (default: the same)."""
        return seed

    def defense_encoder(self) -> ImageEncoder | None:
        """The image encoder a defense with ``uses_encoder`` gets in ``PublisherData.encoder`` (None: this domain
        has none, and such a defense is refused before any work). It must not share weights with a judge."""
        return None
