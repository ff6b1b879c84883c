"""Can the pretrained tiny-world model draw a benchmark identity when told its attributes in words?

    python benchmarks/describe_probe.py [--seeds 2] [--threads 1]

Textual inversion (and any attack that only changes the prompt's embedding) can at best reach what the frozen
UNet draws for *some* conditioning. The portraits world pretrains on anonymous identities described by
compositional captions ("a photo of a person with short black hair, tan skin, a round face, ..."), so the
strongest words-only description of a benchmark identity is its full attribute caption. This script samples
the pretrained model (no fine-tune) with (a) the class name, as the benchmark prompts before any attack, and
(b) the identity's full attribute caption, and prints how often the identity judge recognizes the identity
and its mean identity distance to the class's reference images. If (b) stays near chance, the conditioning
space does not carry identity well enough for an embedding-only attack to succeed in this world.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


class _KeepAll:
    """An rng stand-in for ``pool_caption``: keeps every phrase (it drops a phrase when uniform() >= 0.8)."""

    def uniform(self) -> float:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from advbench.cells import PluginSpec
    from advbench.data import split
    from advbench.interfaces import Context
    from advbench.sampling import SamplingConfig, generate

    dom = PluginSpec("domain", "portraits", {}).build()
    gen = dom.generator
    metrics = {n: PluginSpec("metric", n, {}).build() for n in ("identity-recognition", "identity-distance")}
    base = dom.base_model()
    sampling = SamplingConfig(**dom.sampling())
    classes = dom.illegal_classes() + dom.legal_classes()
    dataset = dom.dataset()
    splits = [split(dataset, classes, seed=dom.split_seed(seed)) for seed in range(args.seeds)]
    print("| class | prompt | identity-recognition | identity-distance |\n|---|---|---|---|")
    for cls in classes:
        described = gen.pool_caption(gen.specs[cls], _KeepAll())
        for kind, prompt in (("name", dom.prompts(cls)[0]), ("attributes", described)):
            values: dict[str, list[float]] = {n: [] for n in metrics}
            for seed, data in enumerate(splits):
                refs = np.stack([e.pixels() for e in data.reference[cls]])
                ctx = Context(seed=seed, progress=False)
                images = generate(base, [prompt], sampling, ctx)
                for n, m in metrics.items():
                    values[n].append(float(m.score(images, refs, [prompt] * len(images), ctx, cls=cls)))
            shown = prompt if kind == "name" else f"attributes: “{prompt}”"
            print(f"| {cls} | {shown} | {np.mean(values['identity-recognition']):.2f} | "
                  f"{np.mean(values['identity-distance']):.3f} |", flush=True)


if __name__ == "__main__":
    main()
