"""A domain over any image folder and any local model folder: the path to real data and real checkpoints.

Example (a Stable Diffusion folder saved by diffusers, portraits in an image folder):

    advbench run --domain folder --domain-arg data=data/celebs --domain-arg model=models/sd15 \\
        --domain-arg illegal=person_a,person_b --domain-arg legal=person_c \\
        --domain-arg primary_metric=clip-score --device cuda --mixed-precision fp16

A defense that verifies with an image encoder (``uses_encoder``, e.g. Dark Miner) runs here only with
``defense_encoder`` set: a local open_clip checkpoint whose image tower it gets, never the one that scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from advbench.errors import UserError
from advbench.interfaces import Domain
from advbench.params import check, param


class FolderDomain(Domain):
    """Illegal and legal classes of an image folder, judged by any registered metrics, on a local model."""

    @dataclass(frozen=True)
    class Params:
        data: str = param("", "Image folder with metadata.jsonl (file_name, text, class).", path=True)
        model: str = param("", "Local diffusers model folder (e.g. a Stable Diffusion pipeline folder).", path=True)
        illegal: tuple[str, ...] = param((), "Illegal classes (comma-separated).")
        legal: tuple[str, ...] = param((), "Legal classes (comma-separated).")
        prompt_template: str = param("a photo of {cls}", "Evaluation prompt; {cls} is the class name.")
        noun: str = param("", "Coarse class word of every class, e.g. person (DreamBooth's class prompts, UCE's "
                              "guide); empty: none.")
        primary_metric: str = param("", "Name of the primary metric plugin.")
        extra_metrics: tuple[str, ...] = param((), "Other metric plugins to report.")
        metric_args: tuple[str, ...] = param(
            (), "Metric parameters as METRIC.KEY=VALUE, comma-separated (e.g. openclip-score.checkpoint=clip.st).")
        scheduler: Literal["ddim", "pndm", "ddpm", "euler", "dpm"] = param("pndm", "Sampler (paper: PNDM).")
        steps: int = param(50, "Sampling steps (paper: 50).")
        guidance_scale: float = param(7.5, "Classifier-free guidance scale.")
        images_per_prompt: int = param(8, "Images per evaluation prompt (paper: 100).")
        defense_encoder: str = param(
            "", "Local open_clip checkpoint whose image tower a defense with uses_encoder (Dark Miner) verifies "
                "with; not the openclip-score checkpoint. Empty: none, and such defenses are refused.", path=True)
        defense_encoder_model: str = param("ViT-B-32", "open_clip architecture of defense_encoder (a name or the "
                                                       "path of a model-config JSON).")

        def __post_init__(self):
            for key in ("data", "model", "primary_metric"):
                check(bool(getattr(self, key)), f"{key} is required (--domain-arg {key}=...)")
            check(bool(self.illegal), "illegal is required: --domain-arg illegal=class_a,class_b")
            check(not set(self.illegal) & set(self.legal), "a class cannot be both illegal and legal")
            check("{cls}" in self.prompt_template, "prompt_template must contain {cls}")
            check(bool(self.defense_encoder_model), "defense_encoder_model must name an open_clip architecture")
            for item in self.metric_args:
                name, _, rest = item.partition(".")
                check(bool(name) and "=" in rest, f"metric_args item {item!r} must look like METRIC.KEY=VALUE")

    def __init__(self, params=None):
        super().__init__(params)
        self.primary_metric = self.params.primary_metric
        self.extra_metrics = tuple(self.params.extra_metrics)

    def dataset(self):
        from advbench.data import ImageFolderDataset

        dataset = ImageFolderDataset(self.params.data)
        missing = [c for c in (*self.params.illegal, *self.params.legal) if c not in dataset.classes()]
        if missing:
            raise UserError(f"classes {missing} are not in {self.params.data}/metadata.jsonl; "
                            f"available: {', '.join(dataset.classes())}")
        return dataset

    def illegal_classes(self):
        return list(self.params.illegal)

    def legal_classes(self):
        return list(self.params.legal)

    def prompts(self, cls):
        return [self.params.prompt_template.format(cls=cls)]

    def class_noun(self, cls):
        return self.params.noun

    def metric_params(self, metric):
        out = {}
        for item in self.params.metric_args:
            name, _, rest = item.partition(".")
            key, _, value = rest.partition("=")
            if name == metric:
                out[key] = value
        return out

    def base_model(self):
        from advbench.model import Model

        return Model.load(self.params.model)

    def model_folder(self):
        return self.params.model

    def defense_encoder(self):
        """open_clip's image tower from ``defense_encoder`` (None when unset), refused when it is the checkpoint
        openclip-score judges with: a defense verifying with the judge would optimise against its own exam."""
        if not self.params.defense_encoder:
            return None
        from advbench.cache import file_sha256
        from advbench_plugins.realmetrics.clip import DEFAULT_CHECKPOINT, OpenClipEncoder

        encoder = OpenClipEncoder(self.params.defense_encoder_model, self.params.defense_encoder,
                                  who="domain 'folder': defense_encoder",
                                  fix="set --domain-arg defense_encoder=PATH defense_encoder_model=ARCH")
        mine = Path(self.params.defense_encoder).expanduser()
        if "openclip-score" in (self.primary_metric, *self.extra_metrics):
            judge = Path(self.metric_params("openclip-score").get("checkpoint", DEFAULT_CHECKPOINT)).expanduser()
            # the same file, or a copy of it (sizes first: hashing a checkpoint takes seconds)
            if judge.is_file() and (judge.resolve() == mine.resolve() or (
                    judge.stat().st_size == mine.stat().st_size and file_sha256(judge) == file_sha256(mine))):
                raise UserError(f"domain 'folder': defense_encoder {self.params.defense_encoder} is the checkpoint "
                                f"openclip-score scores with; a defense must not verify with the judge, so give "
                                f"defense_encoder another open_clip checkpoint")
        return encoder

    def sampling(self):
        p = self.params
        return {"scheduler": p.scheduler, "steps": p.steps, "guidance_scale": p.guidance_scale,
                "images_per_prompt": p.images_per_prompt}
