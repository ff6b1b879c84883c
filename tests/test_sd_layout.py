"""A Stable-Diffusion-layout pipeline end to end on CPU (issue 18): the tiny SD 1.5-shaped folder of
tests/sdlayout.py loads as users' real checkpoints do, one cell through ``advbench run --domain folder`` gives a
complete record, every defense × every attack does (slow), and the paper specs in benchmarks/paper/ parse and
validate against it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from advbench.cli.main import _attach_commands, cli
from tests import sdlayout

PAPER_SPECS = sorted((sdlayout.ROOT / "benchmarks" / "paper").glob("*.toml"))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return sdlayout.build_sd_folder(tmp_path_factory.mktemp("sd") / "sd15-tiny")


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    return sdlayout.build_face_folder(tmp_path_factory.mktemp("faces") / "data")


def invoke(*args):
    _attach_commands()
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------------------- the fixture
def test_fixture_is_a_stable_diffusion_pipeline_folder(sd_folder):
    import torch
    from diffusers import StableDiffusionPipeline

    from advbench.model import Model, check_folder
    from advbench.tokenizer import clip_tokenizer

    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"] == ["diffusers", "PNDMScheduler"]
    for part, weights in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                          ("text_encoder", "model"), ("safety_checker", "model")]:
        assert (sd_folder / part / f"{weights}.safetensors").is_file() and not list((sd_folder / part).glob("*.bin"))
    assert sorted(p.name for p in (sd_folder / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]  # SD 1.5's files
    check_folder(sd_folder)
    model = Model.load(sd_folder)
    smoke = sdlayout.gpu_smoke()
    unet = model.unet.config
    assert tuple(unet.down_block_types) == smoke.SD15_UNET["down_block_types"]
    assert tuple(unet.up_block_types) == smoke.SD15_UNET["up_block_types"] and unet.in_channels == 4
    assert model.downscale == 8 and model.resolution == 64 and model.latent_shape == (4, 8, 8)
    train = model.scheduler.config  # DDPM from SD 1.5's PNDM config, as diffusers' training scripts build it
    assert type(model.scheduler).__name__ == "DDPMScheduler" and train.beta_schedule == "scaled_linear"
    assert (train.beta_start, train.beta_end, train.steps_offset) == (0.00085, 0.012, 1)
    prompts = ["a photo of grace hopper", "Eileen Collins, astronaut!"]
    ours = model.tokenizer(prompts, padding="max_length", max_length=77).input_ids
    assert ours == clip_tokenizer(77)(prompts, padding="max_length", max_length=77).input_ids
    assert len(model.tokenizer) == 49408 and model.tokenizer.model_max_length == 77
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)  # diffusers agrees
    with torch.no_grad():
        out = pipe("a photo of grace hopper", num_inference_steps=2, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3)


def test_fixture_photos_show_a_face_dlib_finds(face_folder):
    from advbench.data import ImageFolderDataset, examples_to_array
    from advbench_plugins.realmetrics.faces import embed_images

    data = ImageFolderDataset(face_folder)
    assert sorted(data.classes()) == sorted(sdlayout.PEOPLE)
    embeddings = {}
    for person in sdlayout.PEOPLE:
        found = embed_images(examples_to_array(data.examples(person), sdlayout.RESOLUTION))
        assert len(found) == 10 and all(e is not None for e in found), person
        embeddings[person] = found
    import numpy as np

    a, b = (np.stack(embeddings[p]) for p in sdlayout.PEOPLE)
    within = np.linalg.norm(a[:, None] - a[None], axis=-1)[np.triu_indices(len(a), 1)].mean()
    across = np.linalg.norm(a[:, None] - b[None], axis=-1).mean()
    assert within < 0.6 < across  # dlib's same-person threshold: two people, each recognised as themselves


def test_minimal_params_build_every_registered_defense_and_attack():
    from advbench import plugins
    from advbench.params import build_params

    for kind in ("defense", "attack"):
        for name in plugins.registry(kind).names():
            cls = plugins.get(kind, name)
            build_params(cls.Params, sdlayout.minimal_params(kind, name), f"{kind} '{name}'")
    assert sdlayout.minimal_params("attack", "fullft") == {"steps": 2, "batch_size": 2}
    assert sdlayout.minimal_params("attack", "no-attack") == {}


# ------------------------------------------------------------------------------------------- one cell
def test_one_cell_through_the_folder_domain_gives_a_complete_record(sd_folder, face_folder, tmp_path):
    metrics = sdlayout.offline_metrics(tmp_path / "weights", face_folder)
    params = sdlayout.domain_params(face_folder, sd_folder, metrics)
    results = tmp_path / "runs.jsonl"
    out = invoke("run", "--domain", "folder", *sdlayout.domain_args(params), "--defense", "random",
                 "--defense-arg", "p=0.3", "--attack", "fullft", "--attack-arg", "batch_size=2", "--budgets", "1,2",
                 "--no-baseline", "--device", "cpu", "--results", results, "--cache-dir", tmp_path / "c", "--quiet")
    assert out.exit_code == 0, out.output
    assert "eileen" in out.output and "hopper" in out.output and "mean illegal" in out.output
    [record] = sdlayout.read_records(results)
    names = [metrics[0], *metrics[1]]
    assert sdlayout.record_problems(record, [sdlayout.ILLEGAL], [sdlayout.LEGAL], names, [1, 2]) == []
    assert record["defense_info"]["frozen_tensor_share"] == pytest.approx(0.3, abs=0.01)
    assert record["cell"]["domain"]["params"]["model"] == str(sd_folder) and names == list(sdlayout.FAST_METRICS)


# ------------------------------------------------------------------------------------- the paper specs
def _parse_only(monkeypatch, path):
    """Load a spec with everything but the deep checks of its files (advbench.validation.check_cell)."""
    import advbench.validation
    from advbench.spec import load_spec

    monkeypatch.setattr(advbench.validation, "check_cell", lambda cell: None)
    return load_spec(path)


@pytest.mark.parametrize("path", PAPER_SPECS, ids=lambda p: p.stem)
def test_paper_spec_parses_and_names_a_local_model_folder(path, monkeypatch):
    from advbench import plugins

    spec = _parse_only(monkeypatch, path)
    assert spec.name == f"paper-{path.stem}" and spec.results == f"results/paper/{path.stem}.jsonl"
    assert spec.cells and {c.seed for c in spec.cells} == {0, 1, 2}
    metrics = set(plugins.registry("metric").names())
    for cell in spec.cells:
        domain = cell.domain.build()
        assert domain.name == "folder" and domain.model_folder() in ("models/sd14", "models/sd15")
        assert {domain.primary_metric, *domain.extra_metrics} <= metrics
        assert cell.defense.name in ("none", "random", "freezeasguard", "uce", "imma", "darkminer")
    assert {c.defense.name for c in spec.cells} > {"none"} and "no-attack" in {c.attack.name for c in spec.cells}


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory, sd_folder):
    """A project folder holding the specs' model folders (copies of the tiny SD folder)."""
    root = tmp_path_factory.mktemp("project")
    for name in ("sd14", "sd15"):
        shutil.copytree(sd_folder, root / "models" / name)
    return root


@pytest.mark.parametrize("path", PAPER_SPECS, ids=lambda p: p.stem)
def test_paper_spec_validates_once_its_folders_exist(path, paper_project, tmp_path, monkeypatch):
    """With the model folder (the tiny SD one), a data folder of the spec's classes and a file at every input path,
    a spec passes every check of every cell (plugins, model folder, images, class sizes, defense encoder); what
    the metrics still miss are only their weight files, each named with where to put it under models/."""
    import advbench.validation as validation
    from advbench.errors import DataError
    from advbench.spec import load_spec

    cells = _parse_only(monkeypatch, path).cells
    monkeypatch.undo()
    domain = cells[0].domain.build()
    missing: dict[str, str] = {}
    placing = []  # set once the project folder is being filled

    def unchecked(domain):  # domain_metrics, but a metric's refusal (its weights are missing) is collected
        from advbench.cells import PluginSpec

        out = {}
        for name in (domain.primary_metric, *domain.extra_metrics):
            out[name] = PluginSpec("metric", name, domain.metric_params(name)).build()
            try:  # a metric refuses a domain by returning why, or by raising about its files
                problem = out[name].check_domain(domain)
            except DataError as exc:
                problem = str(exc)
            if problem:
                missing[name] = problem
            for key, value in validation.path_params(out[name].params).items() if placing else ():
                _placeholder(Path(value), f"{name}.{key}")
        return out

    monkeypatch.setattr(validation, "domain_metrics", unchecked)
    # nothing there: the first thing missing (after the metrics' weights) is the data folder, named with the fix
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_spec(path)
    assert str(err.value) == (f"domain 'folder': parameter data={domain.params.data} does not exist; put the file "
                              f"or folder there or pass its path (see advbench show domain folder)")
    monkeypatch.chdir(paper_project)
    placing.append(True)
    _image_folder(paper_project / domain.params.data, [*domain.illegal_classes(), *domain.legal_classes()])
    for key, value in validation.path_params(domain.params).items():
        _placeholder(paper_project / value, key)  # e.g. Dark Miner's verifier checkpoint
    missing.clear()
    spec = load_spec(path)
    assert len(spec.cells) == len(cells)
    for name, problem in missing.items():
        assert "not found" in problem and " models/" in problem, (name, problem)


def _placeholder(target: Path, what: str) -> None:
    """A file where a spec names one that is not there (a checkpoint), with contents of its own."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"placeholder for {what}")  # distinct: the judge's checkpoint is not the verifier's


def _image_folder(folder: Path, classes: list[str]) -> None:
    import numpy as np

    from advbench.data import InMemoryDataset, export_image_folder
    from advbench.interfaces import Example
    from advbench.testing import pattern_image

    if folder.exists():
        return
    rng = np.random.default_rng(0)
    export_image_folder(InMemoryDataset({c: [Example(f"a photo of {c}", c, pattern_image(i, rng, 64))
                                             for _ in range(10)] for i, c in enumerate(classes)}), folder)


# ---------------------------------------------------------------------------- every defense × every attack
# clean-fid's FID takes the square root of a 2048×2048 covariance (scipy's sqrtm): about 30 s per score on one CPU
# thread, whatever the number of images; 6 scores in each of 42 cells would add two hours to the grid, so the grid
# leaves it out and one cell with every metric runs it.
SLOW_FID = {"clean-fid": "about 30 s per score on one CPU thread: scored in the every-metric cell only"}


@pytest.mark.slow
def test_one_cell_with_every_offline_metric(sd_folder, face_folder, tmp_path):
    metrics = sdlayout.offline_metrics(tmp_path / "weights", face_folder, every=True)
    assert not metrics[3] or all("no local weights" not in m for m in metrics[3]), metrics[3]
    params = sdlayout.domain_params(face_folder, sd_folder, metrics)
    results = tmp_path / "runs.jsonl"
    out = invoke("run", "--domain", "folder", *sdlayout.domain_args(params), "--defense", "random",
                 "--attack", "fullft", "--attack-arg", "batch_size=2", "--budgets", "2", "--no-baseline",
                 "--device", "cpu", "--results", results, "--cache-dir", tmp_path / "c", "--quiet")
    assert out.exit_code == 0, out.output
    [record] = sdlayout.read_records(results)
    names = [metrics[0], *metrics[1]]
    assert "clean-fid" in names or "clean-fid" not in _registered_metrics()
    assert sdlayout.record_problems(record, [sdlayout.ILLEGAL], [sdlayout.LEGAL], names, [2]) == []


def _registered_metrics() -> set[str]:
    from advbench import plugins

    return set(plugins.registry("metric").names())


@pytest.mark.slow
def test_every_defense_and_attack_through_the_folder_domain(sd_folder, face_folder, tmp_path, capsys):
    """The grid a new user would run first on a Stable Diffusion folder: every registered defense and attack at
    minimal settings (2 steps, scored at budgets 1 and 2), every record complete. Takes tens of minutes."""
    from advbench import plugins
    from advbench_plugins.datasets.folder_domain import FolderDomain

    metrics = sdlayout.offline_metrics(tmp_path / "weights", face_folder, every=True, skip=SLOW_FID)
    extra = {}
    skipped = []
    encoder_param = "defense_encoder" in FolderDomain.Params.__dataclass_fields__
    if encoder_param:
        checkpoint, config = sdlayout.defense_encoder(tmp_path / "weights")
        extra = {"defense_encoder": checkpoint, "defense_encoder_model": config}
    defenses = []
    for name in plugins.registry("defense").names():
        if getattr(plugins.get("defense", name), "uses_encoder", False) and not encoder_param:
            skipped.append(f"{name}: needs a defense-side image encoder and the folder domain has no "
                           f"defense_encoder parameter")
            continue
        defenses.append(name)
    attacks = plugins.registry("attack").names()
    params = sdlayout.domain_params(face_folder, sd_folder, metrics, **extra)
    spec = tmp_path / "grid.toml"
    spec.write_text(_grid_toml(params, defenses, attacks))
    results = tmp_path / "grid.jsonl"
    t0 = time.perf_counter()
    out = invoke("bench", spec, "--results", results, "--cache-dir", tmp_path / "cache", "--device", "cpu",
                 "--threads", "1")
    seconds = time.perf_counter() - t0
    assert out.exit_code == 0, out.output
    records = sdlayout.read_records(results)
    names = [metrics[0], *metrics[1]]
    assert len(records) == len(defenses) * len(attacks)
    assert {(r["cell"]["defense"]["name"], r["cell"]["attack"]["name"]) for r in records} == {
        (d, a) for d in defenses for a in attacks}
    for r in records:
        budgets = None if r["cell"]["attack"]["name"] == "no-attack" else [1, 2]
        problems = sdlayout.record_problems(r, [sdlayout.ILLEGAL], [sdlayout.LEGAL], names, budgets)
        assert problems == [], (r["cell"]["defense"]["name"], r["cell"]["attack"]["name"], problems)
    with capsys.disabled():
        print(f"\n{len(records)} cells ({len(defenses)} defenses x {len(attacks)} attacks) in {seconds:.0f} s; "
              f"metrics {names}; left out: {metrics[3] or 'none'}; skipped: {skipped or 'none'}")


def _grid_toml(params: dict, defenses: list[str], attacks: list[str]) -> str:
    def table(values: dict) -> str:
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " }"

    lines = ['name = "sd-layout-grid"', "budgets = [1, 2]", "", "[[domains]]", 'name = "folder"',
             f"params = {table(params)}"]
    for kind, names in (("defense", defenses), ("attack", attacks)):
        for name in names:
            lines += ["", f"[[{kind}s]]", f"name = {json.dumps(name)}",
                      f"params = {table(sdlayout.minimal_params(kind, name))}"]
    return "\n".join(lines) + "\n"
