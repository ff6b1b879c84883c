"""``advbench world build | check | samples``: build, validate and show the tiny world (click only at import)."""

from __future__ import annotations

from pathlib import Path

import click

# judges.JUDGES and judges.ENCODERS, named here so the CLI never imports torch
JUDGE_NAMES = ("identity", "style", "motif", "align")
ENCODER_NAMES = ("verifier",)


@click.group()
def world():
    """Build, validate and show the tiny world (the embedded default model, domains and judges)."""


@world.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Asset folder to write (default: the package's world/assets, i.e. the shipped world).")
@click.option("--only", type=click.Choice(["model", "judges", *JUDGE_NAMES, *ENCODER_NAMES]), default=None,
              help="Build one part only: the model, all judges (with the defense-side encoder verifier), or one of "
                   "them (the motif detector depends on the model).")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
@click.option("--steps", type=int, default=None, help="Pretraining steps (default: the shipped world's).")
@click.option("--judge-steps", type=int, default=None, help="Training steps per judge (default: the shipped ones').")
@click.option("--small", is_flag=True, help="A test-sized world (tiny model and judges) to check the pipeline.")
def build(out, only, threads, steps, judge_steps, small):
    """Pretrain the world model and train the judges (seeded and reproducible; ~45 min on 2 cores)."""
    from dataclasses import replace

    from advbench_plugins.world.build import build as run_build
    from advbench_plugins.world.judges import JudgeTrainConfig
    from advbench_plugins.world.worldmodel import PretrainConfig, WorldModelConfig

    if threads < 1:
        raise click.BadParameter("must be >= 1", param_hint="--threads")
    model_cfg = WorldModelConfig.small() if small else WorldModelConfig()
    pretrain_cfg = PretrainConfig(steps=20, batch_size=8) if small else PretrainConfig()
    judge_cfg = JudgeTrainConfig(steps=20, motif_steps=20, batch_size=16, images_per_class=2, pool_limit=10) if small \
        else JudgeTrainConfig()
    if steps is not None:
        pretrain_cfg = replace(pretrain_cfg, steps=steps)
    if judge_steps is not None:
        judge_cfg = replace(judge_cfg, steps=judge_steps)
    one_judge = only in (*JUDGE_NAMES, *ENCODER_NAMES)
    parts = ("judges",) if one_judge else (only,) if only else ("model", "judges")
    facts = run_build(out, model_cfg, pretrain_cfg, judge_cfg, threads=threads, parts=parts,
                      judges=(only,) if one_judge else None, log=lambda m: click.echo(m, err=True))
    click.echo(f"built {', '.join(parts)} in {facts['build_seconds']} s")


@world.command()
@click.option("--domain", "domains", multiple=True, type=click.Choice(["portraits", "artworks", "explicit"]),
              help="Domain(s) to check (default: all three).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Fine-tune seeds per class.")
@click.option("--classes", type=int, default=2, show_default=True, help="Illegal and legal classes per domain.")
@click.option("--steps", type=int, default=None, help="Attack steps (default: the fullft attack's default).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/world-check.md"),
              show_default=True, help="Markdown file for the table.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
def check(domains, seeds, classes, steps, output, threads):
    """Prove the world is valid: judge accuracy, recognition before/after the default fullft attack, effect size."""
    from advbench_plugins.world.check import run_check

    run_check(domains or ("portraits", "artworks", "explicit"), seeds=seeds, n_classes=classes, steps=steps,
              output=output, threads=threads, log=lambda m: click.echo(m, err=True))


@world.command()
@click.option("--domain", "domains", multiple=True, type=click.Choice(["portraits", "artworks", "explicit"]),
              help="Domain(s) to draw (default: all three).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/images"),
              show_default=True, help="Folder for the PNG grids.")
@click.option("--steps", type=int, default=None, help="Attack steps (default: the fullft attack's default).")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
def samples(domains, out, steps, threads):
    """Write a PNG grid per domain: real images, then generated before and after a fullft fine-tune."""
    from advbench_plugins.world.check import write_samples

    for path in write_samples(domains or ("portraits", "artworks", "explicit"), out, steps=steps, threads=threads,
                              log=lambda m: click.echo(m, err=True)):
        click.echo(str(path))
