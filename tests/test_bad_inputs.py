"""The bad-input battery: every mistake and fault a user makes is refused before any work, in one line, exit 2,
no traceback, and the results file and the stage cache are byte-identical afterwards.

Cases are grouped by the seven categories of docs/reliability.md: validation before work, the real culprit,
storage, ambiguity, numbers that can't be silently wrong, the network, security. Each case builds its inputs in
``inp`` (outside the snapshot) and runs the CLI in-process on a project folder holding one finished record and
one cached stage. Storage faults that must keep work (a full disk, a torn last line) are in test_storage.py and
at the end of this file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from advbench import plugins
from tests.toyworld import TOY_SPEC, ToyPlugin

RUN_CELL = ["--defense", "none", "--attack", "fullft", "--attack-arg", "steps=2", "--attack-arg", "batch_size=2",
            "--domain", "toy"]
FOLDER = {"data": "{data}", "model": "{model}", "illegal": "class_0", "legal": "class_1",
          "primary_metric": "toy-brightness"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The toy plugin, a finished record of RUN_CELL, a tiny model folder and an image-folder dataset."""
    from advbench.cli.main import _attach_commands
    from advbench.data import export_image_folder
    from advbench.testing import tiny_dataset, tiny_model

    plugins.register_plugin(ToyPlugin(), "toy-plugin")
    _attach_commands()
    root = tmp_path_factory.mktemp("shared")
    out = CliRunner().invoke(_cli(), ["run", *RUN_CELL, "--no-baseline", "--quiet", "--device", "cpu",
                                      "--results", str(root / "r.jsonl"), "--cache-dir", str(root / "cache")])
    assert out.exit_code == 0, out.output
    tiny_model(seed=0).save(root / "model")
    export_image_folder(tiny_dataset(n_classes=3, n_per_class=10), root / "data")
    yield SimpleNamespace(record=(root / "r.jsonl").read_text().splitlines()[0], model=root / "model",
                          data=root / "data")
    plugins.unregister_plugin("toy-plugin")


def _cli():
    from advbench.cli.main import cli

    return cli


@pytest.fixture
def ctx(shared, tmp_path, monkeypatch):
    proj, inp = tmp_path / "proj", tmp_path / "in"
    (proj / "cache" / "protect" / "k").mkdir(parents=True)
    (proj / "cache" / "protect" / "k" / ".complete").write_text("protect")
    (proj / "results.jsonl").write_text(shared.record + "\n")
    inp.mkdir()
    monkeypatch.delenv("ADVBENCH_PLUGINS", raising=False)
    return SimpleNamespace(proj=proj, inp=inp, results=proj / "results.jsonl", cache=proj / "cache",
                           record=json.loads(shared.record), model=shared.model, data=shared.data)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------- argument builders
def run(c, *extra):
    return ["run", "--results", c.results, "--cache-dir", c.cache, "--quiet", "--device", "cpu", "--no-baseline",
            *extra]


def folder_run(c, **override):
    params = {**FOLDER, **override}
    args = []
    for key, value in params.items():
        args += ["--domain-arg", f"{key}={value.format(data=c.data, model=c.model)}"]
    return run(c, "--attack", "no-attack", "--domain", "folder", *args)


def bench(c, text, *extra):
    spec = c.inp / "spec.toml"
    spec.write_text(text)
    return ["bench", spec, "--results", c.results, "--cache-dir", c.cache, "--device", "cpu", *extra]




def spec_with(head="", domains='[[domains]]\nname = "toy"\n', defenses='[[defenses]]\nname = "none"\n'):
    return f'{head}\n{domains}\n{defenses}\n[[attacks]]\nname = "fullft"\nparams = {{ steps = 2, batch_size = 2 }}\n'


def copy_data(c, edit):
    """A copy of the dataset with ``edit(folder)`` applied."""
    folder = c.inp / "data"
    shutil.copytree(c.data, folder)
    edit(folder)
    return str(folder)


def copy_model(c, edit):
    folder = c.inp / "model"
    shutil.copytree(c.model, folder)
    edit(folder)
    return folder


def judges_without(c, kind):
    """A copy of the shipped judges folder without ``kind``'s files."""
    from advbench_plugins.world.build import judges_dir

    folder = c.inp / "judges"
    shutil.copytree(judges_dir(), folder, ignore=shutil.ignore_patterns(f"{kind}.*"))
    return folder


def _json_edit(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _records(c, *edits):
    """A results file of the finished record and copies with provenance edits (other cell ids)."""
    lines = [json.dumps(c.record)]
    for i, edit in enumerate(edits):
        rec = json.loads(json.dumps(c.record))
        rec["cell"]["defense"] = {"name": "random", "params": {"p": 0.1 * (i + 1)}, "label": f"R{i}"}
        rec["cell_id"] = f"{i:016d}"
        rec["provenance"].update(edit)
        lines.append(json.dumps(rec))
    c.results.write_text("\n".join(lines) + "\n")
    return ["leaderboard", c.results]


def _png_first_bytes(folder: Path, n: int):
    path = folder / "000000.png"
    path.write_bytes(path.read_bytes()[:n])


# ------------------------------------------------------------------------------------------------ cases
CASES = {
    # 1. validation before the first stage (CATEGORY below maps each case to its category)
    "unknown-defense": (lambda c: run(c, *RUN_CELL, "--defense", "radnom"), "Did you mean 'random'"),
    "param-nan": (lambda c: run(c, *RUN_CELL, "--defense", "random", "--defense-arg", "p=nan"), "finite"),
    "param-inf": (lambda c: run(c, *RUN_CELL, "--attack-arg", "lr=inf"), "finite"),
    "param-type": (lambda c: run(c, *RUN_CELL, "--domain-arg", "per_class=ten"), "per_class"),
    "seed-too-big": (lambda c: run(c, *RUN_CELL, "--seed", str(2**32)), "--seed"),
    "budgets-decreasing": (lambda c: run(c, *RUN_CELL, "--budgets", "2,1"), "budgets"),
    "budgets-not-anytime": (lambda c: run(c, "--attack", "no-attack", "--domain", "toy", "--budgets", "1,2"),
                            "cannot be scored at several budgets"),
    "metric-typo": (lambda c: folder_run(c, primary_metric="toy-brightnes"), "Did you mean 'toy-brightness'"),
    "extra-metric-unknown": (lambda c: folder_run(c, extra_metrics="nope"), "Unknown metric 'nope'"),
    "data-missing": (lambda c: folder_run(c, data=str(c.inp / "nodata")), "nodata"),
    "metadata-not-utf8": (lambda c: folder_run(c, data=copy_data(c, lambda f: (f / "metadata.jsonl").write_bytes(
        b'{"file_name": "000000.png", "text": "caf\xe9", "class": "class_0"}\n'))), "not UTF-8"),
    "image-garbage": (lambda c: folder_run(c, data=copy_data(c, lambda f: (f / "000003.png").write_bytes(b"x" * 99))),
                      "000003.png"),
    "image-truncated": (lambda c: folder_run(c, data=copy_data(c, lambda f: _png_first_bytes(f, 60))), "000000.png"),
    "metadata-bad-json": (lambda c: folder_run(c, data=copy_data(c, lambda f: (f / "metadata.jsonl").write_text(
        (f / "metadata.jsonl").read_text().replace("}", "", 1)))), "line 1"),
    "class-missing": (lambda c: folder_run(c, illegal="class_9"), "class_9"),
    "class-too-small-for-kid": (lambda c: run(c, "--attack", "no-attack", "--domain", "portraits", "--domain-arg",
                                              "images_per_class=5"), "fewer than the 8"),
    "model-missing": (lambda c: folder_run(c, model=str(c.inp / "nomodel")), "nomodel"),
    "model-no-unet": (lambda c: folder_run(c, model=str(copy_model(c, lambda m: shutil.rmtree(m / "unet")))),
                      "unet"),
    "model-option-missing": (lambda c: run(c, *RUN_CELL, "--model", str(c.inp / "nowhere")), "nowhere"),
    "judges-missing": (lambda c: run(c, "--attack", "no-attack", "--domain", "portraits", "--domain-arg",
                                     f"judges={c.inp / 'nojudges'}"), "judges"),
    "encoder-none-on-domain": (lambda c: run(c, "--defense", "toy-encoder", "--attack", "no-attack", "--domain", "toy"),
                               "domain 'toy' supplies none"),
    "encoder-folder-unset": (lambda c: [*folder_run(c), "--defense", "toy-encoder"], "defense_encoder=PATH"),
    "encoder-verifier-missing": (lambda c: run(c, "--defense", "toy-encoder", "--attack", "no-attack", "--domain",
                                               "portraits", "--domain-arg", f"judges={judges_without(c, 'verifier')}"),
                                 "--only verifier"),
    "results-is-folder": (lambda c: ["run", *RUN_CELL, "--results", c.proj, "--cache-dir", c.cache,
                                     "--no-baseline"], "is a folder"),
    "results-parent-is-file": (lambda c: ["run", *RUN_CELL, "--results", c.results / "r.jsonl", "--cache-dir",
                                          c.cache, "--no-baseline"], "is a file"),
    "cache-is-file": (lambda c: ["run", *RUN_CELL, "--results", c.results, "--cache-dir", c.results,
                                 "--no-baseline"], "--cache-dir"),
    "cache-env-is-file": (lambda c: (["run", *RUN_CELL, "--results", c.results, "--no-baseline"],
                                     {"ADVBENCH_CACHE": str(c.results)}), "ADVBENCH_CACHE"),
    "spec-missing": (lambda c: ["bench", c.inp / "nope.toml"], "nope.toml"),
    "spec-not-toml": (lambda c: bench(c, "name = [unclosed"), "not valid TOML"),
    "spec-unknown-key": (lambda c: bench(c, "seed = [0]\n" + TOY_SPEC), "Did you mean 'seeds'"),
    "spec-negative-seed": (lambda c: bench(c, "seeds = [-1]\n" + TOY_SPEC), "seeds"),
    "spec-seed-too-big": (lambda c: bench(c, f"seeds = [{2**32}]\n" + TOY_SPEC), "seeds"),
    "spec-float-seed": (lambda c: bench(c, "seeds = [0.5]\n" + TOY_SPEC), "seeds"),
    "spec-later-cell-bad": (lambda c: bench(c, spec_with(domains='[[domains]]\nname = "toy"\n[[domains]]\nname = '
                                                                 '"toy"\nparams = { per_class = "x" }\n')),
                            "per_class"),
    "spec-later-cell-no-data": (lambda c: bench(c, spec_with(domains=(
        '[[domains]]\nname = "toy"\n[[domains]]\nname = "folder"\nparams = { data = "%s", model = "%s", illegal = '
        '"class_0", primary_metric = "toy-brightness" }\n' % (c.inp / "gone", c.model)))), "gone"),
    "check-missing": (lambda c: bench(c, TOY_SPEC, "--check", c.inp / "base.csv"), "base.csv"),
    "check-not-leaderboard": (lambda c: (c.inp.joinpath("b.csv").write_text("a,b\n1,2\n"),
                                         bench(c, TOY_SPEC, "--check", c.inp / "b.csv"))[1], "lacks columns"),
    "tolerance-nan": (lambda c: bench(c, TOY_SPEC, "--tolerance", "nan"), "--tolerance"),
    "tolerance-negative": (lambda c: bench(c, TOY_SPEC, "--tolerance", "-1"), "--tolerance"),
    "leaderboard-outdir-file": (lambda c: ["leaderboard", c.results, "--output-dir", c.results], "--output-dir"),
    "leaderboard-outdir-under-file": (lambda c: ["leaderboard", c.results, "--output-dir", c.results / "lb"],
                                      "is a file"),
    "leaderboard-tolerance-inf": (lambda c: ["leaderboard", c.results, "--tolerance", "inf"], "--tolerance"),
    # 2. the real culprit
    "unet-config-mismatch": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: _json_edit(
        m / "unet" / "config.json", block_out_channels=[16, 16]))), "config"),
    "text-config-mismatch": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: _json_edit(
        m / "text_encoder" / "config.json", hidden_size=48))), "config"),
    "config-not-json": (lambda c: run(c, *RUN_CELL, "--model", copy_model(
        c, lambda m: (m / "unet" / "config.json").write_text("{nope"))), "config"),
    "weights-truncated": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: (
        m / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (m / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:500]))), "weights"),
    "weights-garbage": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: (
        m / "text_encoder" / "model.safetensors").write_bytes(b"\0" * 64))), "weights"),
    # 3. storage: files that must not be extended or silently dropped
    "results-middle-line-bad": (lambda c: (c.results.write_text("{bad\n" + json.dumps(c.record) + "\n"),
                                           run(c, *RUN_CELL))[1], "line 1"),
    "results-not-utf8": (lambda c: (c.results.write_bytes(b"\xff\xfe\n"), run(c, *RUN_CELL))[1], "UTF-8"),
    "results-last-line-not-record": (lambda c: (c.results.write_text(json.dumps(c.record) + "\n{}\n"),
                                                run(c, *RUN_CELL))[1], "not an advbench result record"),
    "leaderboard-results-bad": (lambda c: (c.results.write_text("[1, 2]\n{}\n"), ["leaderboard", c.results])[1],
                                "line 1"),
    # 4. ambiguity
    "arg-twice": (lambda c: run(c, *RUN_CELL, "--attack-arg", "steps=3"), "given twice"),
    "spec-seed-twice": (lambda c: bench(c, "seeds = [0, 0]\n" + TOY_SPEC), "more than once"),
    "spec-threat-twice": (lambda c: bench(c, 'threat_models = ["compliant", "compliant"]\n' + TOY_SPEC),
                          "more than once"),
    "spec-entry-twice": (lambda c: bench(c, spec_with(defenses='[[defenses]]\nname = "none"\n' * 2)),
                         "appears twice"),
    "spec-sweep-repeats": (lambda c: bench(c, spec_with(defenses='[[defenses]]\nname = "random"\n'
                                                                 'sweep = { p = [0.5, 0.5] }\n')), "appears twice"),
    "plugins-allow-list": (lambda c: (["list"], {"ADVBENCH_PLUGINS": "advbench-plugins-typo"}), "match no installed"),
    # 5. numbers that can't be silently wrong
    "world-metric-elsewhere": (lambda c: folder_run(c, primary_metric="clip-score"), "cannot judge domain 'folder'"),
    "world-metric-extra": (lambda c: folder_run(c, extra_metrics="kid"), "cannot judge domain 'folder'"),
    "mixed-versions": (lambda c: _records(c, {"advbench_version": "0.0.1"}), "advbench version"),
    "mixed-devices": (lambda c: _records(c, {"device": "cuda:0"}), "device type"),
    "mixed-worlds": (lambda c: _records(c, {"domain_version": "3"}, {"domain_version": "4"}), "domain version"),
    "mixed-models": (lambda c: _records(c, {"model_fingerprint": "0" * 64}), "base model"),
    "record-from-other-device": (lambda c: (c.results.write_text(json.dumps(
        {**c.record, "provenance": {**c.record["provenance"], "device": "cuda:0"}}) + "\n"), run(c, *RUN_CELL))[1],
        "computed on cuda"),
    # 6. the network is never touched unless asked
    "hub-id-not-local": (lambda c: run(c, *RUN_CELL, "--model", "someone/some-model"), "hf:"),
    "hub-id-malformed": (lambda c: run(c, *RUN_CELL, "--model", "hf:not a valid id"), "hf:"),
    "folder-model-hub-id": (lambda c: folder_run(c, model="someone/some-model"), "someone/some-model"),
    # 7. security: safetensors only, paths from a spec stay inside
    "bin-weights-only": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: (
        m / "unet" / "diffusion_pytorch_model.safetensors").rename(m / "unet" / "diffusion_pytorch_model.bin"))),
        "safetensors"),
    "ckpt-weights-only": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: (
        m / "text_encoder" / "model.safetensors").rename(m / "text_encoder" / "model.ckpt"))), "safetensors"),
    "model-meta-newer": (lambda c: run(c, *RUN_CELL, "--model", copy_model(c, lambda m: _json_edit(
        m / "advbench_model.json", format_version=99))), "newer"),
    "spec-results-escapes": (lambda c: bench(c, 'results = "../escape.jsonl"\n' + TOY_SPEC)[:2], "leads outside"),
    "spec-model-escapes": (lambda c: bench(c, 'model = "../model"\n' + TOY_SPEC), "leads outside"),
    "spec-data-escapes": (lambda c: bench(c, spec_with(domains='[[domains]]\nname = "folder"\nparams = { data = '
                                                               '"../../data", model = "/m", illegal = "a", '
                                                               'primary_metric = "toy-brightness" }\n')),
                          "leads outside"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line_before_any_work(ctx, name, monkeypatch):
    make, expected = CASES[name]
    args = make(ctx)
    env = {}
    if isinstance(args, tuple):
        args, env = args
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if env:
        plugins.reset()
    before = snapshot(ctx.proj)
    try:
        out = CliRunner().invoke(_cli(), [str(a) for a in args])
    finally:
        if env:
            monkeypatch.undo()
            plugins.reset()
            plugins.register_plugin(ToyPlugin(), "toy-plugin")
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (out.output, out.exception)
    assert "Traceback" not in out.output and len(errors) == 1, out.output
    assert expected in errors[0], errors[0]
    assert snapshot(ctx.proj) == before


FIRST_OF_CATEGORY = {"unknown-defense": "validation", "unet-config-mismatch": "culprit",
                     "results-middle-line-bad": "storage", "arg-twice": "ambiguity", "world-metric-elsewhere": "numbers",
                     "hub-id-not-local": "network", "bin-weights-only": "security"}


def test_the_battery_covers_every_category_with_several_cases():
    counts, category = {}, None
    for name in CASES:
        category = FIRST_OF_CATEGORY.get(name, category)
        counts[category] = counts.get(category, 0) + 1
    assert set(counts) == set(FIRST_OF_CATEGORY.values()) and min(counts.values()) >= 3, counts
    assert sum(counts.values()) >= 60
