"""Human evaluation: the blind form (order, blindness, images ↔ key), the import of answers (validation,
aggregation) and the round trip through a real browser: fill the page, save, import."""

import base64
import hashlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from advbench.cli import humaneval as humaneval_cli
from advbench.cli.leaderboard import load_records
from advbench.cli.main import cli
from advbench.errors import DataError, UserError
from advbench.humaneval import COLUMNS, build_form, export_form, import_answers, read_ratings
from advbench.leaderboard import KEYS, _key

from tests.browser import chrome, console_errors

CI = Path(__file__).resolve().parents[1] / "results" / "ci.jsonl"
SIDE = 8


def _colour(cell_id: str, cls: str, index: int) -> np.ndarray:
    """A distinct colour per image, so a picture on the page tells which (cell, class, index) it is."""
    digest = hashlib.sha256(json.dumps([cell_id, cls, index]).encode()).digest()
    return np.frombuffer(digest[:3], dtype=np.uint8)


def _strip(cell_id: str, cls: str, count: int) -> str:
    """A thumbnail strip as contract 1 describes it, built here with PIL: ``count`` square images side by side."""
    tiles = [np.broadcast_to(_colour(cell_id, cls, i), (SIDE, SIDE, 3)) for i in range(count)]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, axis=1).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _with_thumbnails(record: dict) -> dict:
    """A committed record plus thumbnails; the last class got 3 images only (fewer than ``per_strip``)."""
    classes = record["metrics"]["classes"]
    names = list(classes)
    rec = json.loads(json.dumps(record))
    rec["thumbnails"] = {"max_side": 64, "per_strip": 4, "classes": {
        cls: {"role": classes[cls]["role"], "prompt": f"a photo of {cls}", "before": None,
              "after": _strip(record["cell_id"], cls, 3 if cls == names[-1] else 4),
              "reference": _strip("reference", cls, 2)} for cls in names}}
    return rec


@pytest.fixture(scope="module")
def records():
    return [_with_thumbnails(r) for r in load_records(CI)]


@pytest.fixture
def results(records, tmp_path):
    path = tmp_path / "thumbs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def invoke():
    humaneval_cli.attach(cli)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _identities(key: dict) -> list[tuple]:
    return [(key["images"][i]["cell_id"], key["images"][i]["class"], key["images"][i]["index"]) for i in key["order"]]


def test_order_is_seeded_and_covers_every_image(records):
    _, first, _ = build_form(records, seed=3)
    _, again, _ = build_form(list(reversed(records)), seed=3)
    _, other, _ = build_form(records, seed=4)
    expected = {(r["cell_id"], cls, i) for r in records for n, cls in enumerate(r["metrics"]["classes"])
                for i in range(3 if n == 3 else 4)}
    assert len(_identities(first)) == len(expected) == 9 * 15 and set(_identities(first)) == expected
    assert _identities(again) == _identities(first)  # same seed, files in another order: the same form
    assert _identities(other) != _identities(first) and set(_identities(other)) == expected
    assert first["form_id"] != again["form_id"] and set(first["images"]).isdisjoint(again["images"])  # new secret


def test_page_is_blind_and_its_images_match_the_key(records, tmp_path):
    page_path, key_path, key, skipped = export_form(records, tmp_path / "form.html", seed=1)
    page = page_path.read_text()
    assert key_path == tmp_path / "form.key.json" and json.loads(key_path.read_text()) == key and not skipped
    secrets = {r["cell_id"] for r in records} | {r["config_hash"] for r in records}
    for rec in records:
        cell = rec["cell"]
        secrets |= {cell["defense"]["label"], cell["defense"]["name"], cell["attack"]["label"], cell["attack"]["name"]}
    secrets -= {"none"}  # the CSP says 'none'; checked below without it
    found = [s for s in secrets if s.lower() in page.lower()]
    assert found == []
    without_csp = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page, flags=re.S)
    assert not re.search(r"\b(none|defen[cs]e|attack|illegal|legal|compliant|unconstrained|seed|cell)\b", without_csp, re.I)
    assert "http://" not in page and "https://" not in page and 'src="data:image/png;base64,' in page
    # every picture shown is the image the key says it is, in the key's order
    shown = re.findall(r'data-image="(\w+)">\s*<img src="data:image/png;base64,([^"]+)"', page)
    assert [i for i, _ in shown] == key["order"]
    for image_id, b64 in shown:
        entry = key["images"][image_id]
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
        assert pixels.shape == (SIDE, SIDE, 3)
        assert (pixels == _colour(entry["cell_id"], entry["class"], entry["index"])).all()
        rec = next(r for r in records if r["cell_id"] == entry["cell_id"])
        assert tuple(entry[k] for k in KEYS) == _key(rec) and entry["seed"] == rec["cell"]["seed"]
        assert entry["role"] == rec["metrics"]["classes"][entry["class"]]["role"]
        assert f"“a photo of {entry['class']}”?" in page


def test_each_image_shows_its_class_references(records, tmp_path):
    page_path, _, key, _ = export_form(records, tmp_path / "form.html", seed=3)
    sections = re.findall(r'data-image="(\w+)">(.*?)</section>', page_path.read_text(), flags=re.S)
    assert [i for i, _ in sections] == key["order"]
    for image_id, section in sections:
        cls = key["images"][image_id]["class"]
        found = re.findall(r'<div class="reference"><img src="data:image/png;base64,([^"]+)"', section)
        assert len(found) == 1, section
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(found[0]))).convert("RGB"))
        assert pixels.shape == (SIDE, 2 * SIDE, 3)
        assert (pixels[:, :SIDE] == _colour("reference", cls, 0)).all()
        assert (pixels[:, SIDE:] == _colour("reference", cls, 1)).all()
    old = [{**r, "thumbnails": {**r["thumbnails"], "classes": {c: {k: v for k, v in e.items() if k != "reference"}
                                                              for c, e in r["thumbnails"]["classes"].items()}}}
           for r in records]  # written before references were kept: no reference block, no error
    page = export_form(old, tmp_path / "old.html", seed=3)[0].read_text()
    assert 'class="reference"' not in page


def test_max_per_row_draws_at_most_k_per_row_and_role(records):
    _, key, _ = build_form(records, seed=0, max_per_row=5)
    groups = pd.Series([tuple(v[k] for k in (*KEYS, "role")) for v in key["images"].values()]).value_counts()
    assert len(groups) == 6 and (groups == 5).all()  # 3 rows × 2 roles; each had 3 seeds × 7 or 8 images
    _, other, _ = build_form(records, seed=1, max_per_row=5)
    assert set(_identities(key)) != set(_identities(other))
    with pytest.raises(UserError, match="max-per-row"):
        build_form(records, max_per_row=0)


def test_export_cli_skips_records_without_thumbnails(invoke, results, tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(results.read_text() + CI.read_text())
    out = invoke("humaneval", "export", mixed, "-o", tmp_path / "form.html", "--seed", "2")
    assert out.exit_code == 0, out.output
    assert "9 of 18 record(s) carry no thumbnails" in out.output and "135 images" in out.output
    again = invoke("humaneval", "export", mixed, "-o", tmp_path / "form.html")
    assert again.exit_code == 2 and "form.key.json exists" in again.output and len(again.output.splitlines()) == 1
    assert invoke("humaneval", "export", results, "-o", tmp_path / "form.html", "--force").exit_code == 0
    none = invoke("humaneval", "export", CI, "-o", tmp_path / "bare.html")
    assert none.exit_code == 2 and none.output.splitlines()[-1].startswith("Error: none of the 9 record(s)")
    assert not (tmp_path / "bare.html").exists() and not (tmp_path / "bare.key.json").exists()
    nested = invoke("humaneval", "export", results, "-o", tmp_path / "new" / "folder" / "form.html")
    assert nested.exit_code == 0, nested.output  # a missing output folder is made, as for every other output
    assert (tmp_path / "new" / "folder" / "form.key.json").is_file()


def test_damaged_thumbnails_are_a_one_line_error(records):
    bad = json.loads(json.dumps(records[0]))
    cls = next(iter(bad["thumbnails"]["classes"]))
    bad["thumbnails"]["classes"][cls]["after"] = "bm90IGEgcG5n"  # base64 of "not a png"
    with pytest.raises(DataError, match=f"cell {bad['cell_id']}: the 'after' thumbnails of class '{cls}'"):
        build_form([bad])
    bad["thumbnails"]["classes"][cls]["role"] = "secret"
    with pytest.raises(DataError, match="need a role"):
        build_form([bad])


def _answers(key: dict, rater: str, ratings: dict) -> dict:
    return {"format": "advbench-humaneval-answers", "version": 1, "form_id": key["form_id"], "rater": rater,
            "answers": ratings}


def test_import_aggregates_like_numpy(records, tmp_path):
    _, key_path, key, _ = export_form(records, tmp_path / "form.html", seed=0)
    rng = np.random.default_rng(7)
    files, given = [], []  # given: (rater, image id, concept, quality) as filled in
    for rater in ("ann", "bob", "cy"):
        ratings = {}
        for image_id in rng.choice(key["order"], size=60, replace=False):
            concept, quality = (int(v) for v in rng.integers(1, 8, size=2))
            concept = None if rng.random() < 0.15 else concept  # a question left out now and then
            ratings[str(image_id)] = {"concept": concept, "quality": quality}
            given.append((rater, str(image_id), concept, quality))
        path = tmp_path / f"{rater}.json"
        path.write_text(json.dumps(_answers(key, rater, ratings)))
        files.append(path)
    table, summary = import_answers(files, key_path, tmp_path / "ratings.csv")
    assert [(s[1], s[2], s[3]) for s in summary] == [(r, 60, 135 - 60) for r in ("ann", "bob", "cy")]
    expected = {}
    for rater, image_id, concept, quality in given:
        entry = key["images"][image_id]
        group = expected.setdefault(tuple(entry[k] for k in (*KEYS, "role")), {"c": [], "q": [], "raters": set()})
        group["c"] += [] if concept is None else [concept]
        group["q"].append(quality)
        group["raters"].add(rater)
    saved = read_ratings(tmp_path / "ratings.csv")
    assert list(saved.columns) == COLUMNS and len(saved) == len(expected) == 6
    for _, row in saved.iterrows():
        group = expected[tuple(row[k] for k in (*KEYS, "role"))]
        c, q = np.array(group["c"], float), np.array(group["q"], float)
        assert row["concept_mean"] == pytest.approx(c.mean()) and row["concept_std"] == pytest.approx(c.std(ddof=1))
        assert row["quality_mean"] == pytest.approx(q.mean()) and row["quality_std"] == pytest.approx(q.std(ddof=1))
        assert row["raters"] == len(group["raters"]) and row["ratings"] == len(q)
    pd.testing.assert_frame_equal(saved, table.reset_index(drop=True), check_dtype=False)


def test_one_rating_has_std_zero(records, tmp_path):
    _, key_path, key, _ = export_form(records, tmp_path / "form.html")
    first = key["order"][0]
    (tmp_path / "a.json").write_text(json.dumps(_answers(key, "ann", {first: {"concept": 6, "quality": None}})))
    table, _ = import_answers([tmp_path / "a.json"], key_path, tmp_path / "r.csv")
    row = read_ratings(tmp_path / "r.csv").iloc[0]
    assert len(table) == 1 and (row["concept_mean"], row["concept_std"], row["ratings"]) == (6, 0, 1)
    assert np.isnan(row["quality_mean"]) and np.isnan(row["quality_std"])


@pytest.mark.parametrize("change, message", [
    (lambda a: a["answers"].update({"i0123456789ab": {"concept": 3, "quality": 3}}), "image id 'i0123456789ab'"),
    (lambda a: a.update(form_id="fdeadbeef000"), "answers form 'fdeadbeef000', but the key is for form"),
    (lambda a: a["answers"][next(iter(a["answers"]))].update(concept=8), "concept rating 8"),
    (lambda a: a["answers"][next(iter(a["answers"]))].update(quality=2.5), "quality rating 2.5"),
    (lambda a: a["answers"][next(iter(a["answers"]))].update(quality="4"), "quality rating '4'"),
    (lambda a: a["answers"][next(iter(a["answers"]))].update(quality=True), "quality rating True"),
    (lambda a: a.update(rater=" "), "no rater name"),
])
def test_import_rejects_bad_answers(invoke, results, tmp_path, change, message):
    assert invoke("humaneval", "export", results, "-o", tmp_path / "form.html").exit_code == 0
    key = json.loads((tmp_path / "form.key.json").read_text())
    good = _answers(key, "ann", {i: {"concept": 4, "quality": 5} for i in key["order"][:3]})
    (tmp_path / "good.json").write_text(json.dumps(good))
    change(good)
    (tmp_path / "bad.json").write_text(json.dumps(good))
    out = invoke("humaneval", "import", tmp_path / "good.json", tmp_path / "bad.json", "--key",
                 tmp_path / "form.key.json", "-o", tmp_path / "ratings.csv")
    assert out.exit_code == 2 and len(out.output.splitlines()) == 1, out.output
    assert out.output.startswith(f"Error: {tmp_path / 'bad.json'}") and message in out.output
    assert not (tmp_path / "ratings.csv").exists()


def test_import_refuses_one_rater_twice(records, tmp_path):
    _, key_path, key, _ = export_form(records, tmp_path / "form.html")
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_answers(key, "ann", {key["order"][0]: {"quality": 2}})))
    with pytest.raises(DataError, match="rater 'ann' answered in both"):
        import_answers([tmp_path / "a.json", tmp_path / "b.json"], key_path, tmp_path / "r.csv")


@pytest.mark.parametrize("edit, message", [
    (lambda df: df.drop(columns="raters"), "lacks column"),
    (lambda df: df.assign(role="forbidden"), "role 'forbidden'"),
    (lambda df: df.assign(concept_mean=7.5), "concept_mean must lie in 1–7"),
    (lambda df: df.assign(quality_std=-1), "quality_std be non-negative"),
    (lambda df: df.assign(ratings=0), "ratings must be whole numbers"),
    (lambda df: df.assign(raters="many"), "not a number"),
    (lambda df: pd.concat([df, df.iloc[:1]]), "has two rows for"),
])
def test_read_ratings_rejects_bad_tables(tmp_path, edit, message):
    good = pd.DataFrame([{"domain": "portraits", "defense": "none", "attack": "fullft", "threat_model": "compliant",
                          "role": "illegal", "concept_mean": 5.5, "concept_std": 0.7, "quality_mean": 4.0,
                          "quality_std": 0.0, "raters": 2, "ratings": 2}])
    good.to_csv(tmp_path / "good.csv", index=False)
    assert read_ratings(tmp_path / "good.csv").iloc[0]["defense"] == "none"  # not read as a missing value
    edit(good).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=re.escape(message)):
        read_ratings(tmp_path / "bad.csv")


def test_cli_modules_do_not_import_torch():
    code = ("import sys, advbench.cli.humaneval, advbench.humaneval; "
            "from advbench.cli.main import _attach_commands; _attach_commands(); "
            "assert 'torch' not in sys.modules and 'PIL' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def browser(tmp_path):
    (tmp_path / "downloads").mkdir()
    yield from chrome(download_dir=tmp_path / "downloads")


def test_browser_round_trip(browser, invoke, results, tmp_path):
    from selenium.webdriver.common.by import By

    assert invoke("humaneval", "export", results, "-o", tmp_path / "form.html", "--seed", "5").exit_code == 0
    key = json.loads((tmp_path / "form.key.json").read_text())
    browser.get((tmp_path / "form.html").as_uri())
    browser.find_element(By.ID, "save").click()  # no name yet: nothing saved, the page says why
    assert "enter your name" in browser.find_element(By.ID, "message").text
    browser.find_element(By.ID, "rater").send_keys("Ada Rater")
    group = {i: tuple(v[k] for k in (*KEYS, "role")) for i, v in key["images"].items()}
    firsts = list({group[i]: i for i in reversed(key["order"])}.values())[:3]  # three images of three groups
    filled = dict(zip(firsts, [(7, 2), (1, 6), (4, None)]))
    for image_id, (concept, quality) in filled.items():
        for question, value in (("concept", concept), ("quality", quality)):
            if value is not None:
                radio = browser.find_element(By.CSS_SELECTOR, f'input[name="{image_id}-{question}"][value="{value}"]')
                browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", radio)
                radio.click()
    assert browser.find_element(By.ID, "progress").text == f"3 of {len(key['order'])} images rated"
    browser.refresh()  # a closed tab or a crash: the answers and the name come back from the browser's storage
    assert browser.find_element(By.ID, "progress").text == f"3 of {len(key['order'])} images rated"
    assert browser.find_element(By.ID, "rater").get_attribute("value") == "Ada Rater"
    for image_id, (concept, quality) in filled.items():
        for question, value in (("concept", concept), ("quality", quality)):
            checked = browser.find_elements(By.CSS_SELECTOR, f'input[name="{image_id}-{question}"]:checked')
            assert [c.get_attribute("value") for c in checked] == ([] if value is None else [str(value)])
    browser.find_element(By.ID, "save").click()
    deadline, saved = time.time() + 20, []
    while time.time() < deadline and not saved:
        saved = [p for p in (tmp_path / "downloads").glob("*.json")]
        time.sleep(0.2)
    assert [p.name for p in saved] == [f"answers-{key['form_id']}-Ada-Rater.json"]
    answers = json.loads(saved[0].read_text())
    assert (answers["rater"], answers["answered"], answers["unanswered"]) == ("Ada Rater", 3, len(key["order"]) - 3)
    out = invoke("humaneval", "import", saved[0], "--key", tmp_path / "form.key.json", "-o", tmp_path / "r.csv")
    assert out.exit_code == 0, out.output
    ratings = read_ratings(tmp_path / "r.csv")
    for image_id, (concept, quality) in filled.items():
        entry = key["images"][image_id]
        row = ratings[(ratings[KEYS + ["role"]] == pd.Series({k: entry[k] for k in (*KEYS, "role")})).all(axis=1)]
        assert len(row) == 1 and row.iloc[0]["ratings"] == 1 and row.iloc[0]["raters"] == 1
        assert row.iloc[0]["concept_mean"] == concept
        assert row.iloc[0]["quality_mean"] == quality if quality is not None else np.isnan(row.iloc[0]["quality_mean"])
    assert len(ratings) == 3
    assert console_errors(browser) == []
