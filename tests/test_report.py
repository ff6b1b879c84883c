"""The HTML report (``advbench report``): self-contained, one table row per leaderboard row, image grids from the
records' thumbnails (and notes where there are none), FreezeAsGuard's mask from the record or the stage cache,
human ratings, and one-line errors on bad input.

The records are the committed ``results/ci.jsonl`` (portraits, none / R-30 / FG-30 × fullft, 3 seeds); thumbnails
are added to copies of them as ``advbench run`` writes them (contract: :mod:`advbench.thumbnails`), each strip a
distinct colour so a test can tell which record's strip landed in which cell.
"""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from advbench.cli.leaderboard import load_records
from advbench.leaderboard import KEYS, _key
from advbench.report import NO_THUMBNAILS, block_fractions, write_report
from advbench.standard import build_standard, merge_records
from advbench.thumbnails import class_thumbnails, encode_strip, record_thumbnails

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "results" / "ci.jsonl"
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "col", "wbr"}


# ------------------------------------------------------------------------------------------- helpers
class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def find_all(self, tag: str, **attrs: str) -> list["Node"]:
        found = []
        for child in self.children:
            if child.tag == tag and all(child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class TreeParser(HTMLParser):
    """A tiny DOM of the report (stdlib only): enough to find tables, rows, cells and images."""

    def __init__(self):
        super().__init__()
        self.root = self.node = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.text += data


def parse(path: Path) -> Node:
    parser = TreeParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.root


def strip_for(*parts) -> np.ndarray:
    """Four 16×16 images of one colour derived from ``parts`` (distinct strips, tiny PNGs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    images = np.empty((4, 16, 16, 3), dtype=np.uint8)
    images[:] = np.frombuffer(digest[:3], dtype=np.uint8)
    images[:, :8] //= 2  # not a flat colour: the top half darker
    return images


def with_thumbnails(record: dict) -> dict:
    """A copy of ``record`` with a contract-1 ``thumbnails`` key (``before`` only for cells with budgets)."""
    budgets = len(record["cell"].get("budgets") or []) > 1
    classes = {cls: class_thumbnails(entry["role"], f"a photo of {cls}", strip_for(record["cell_id"], cls, "after"),
                                     strip_for(record["cell_id"], cls, "before") if budgets else None)
               for cls, entry in record["metrics"]["classes"].items()}
    return {**record, "thumbnails": record_thumbnails(classes)}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def thumbnail_results(folder: Path, drop=lambda rec: False, bare=lambda rec: False) -> Path:
    """``results/ci.jsonl`` with thumbnails in every record, except those ``bare`` says (kept without) and those
    ``drop`` says (left out)."""
    records = [rec if bare(rec) else with_thumbnails(rec) for rec in load_records(CI) if not drop(rec)]
    return write_jsonl(folder / "thumbs.jsonl", records)


def grids(doc: Node) -> dict[str, list[Node]]:
    """{grid title: its body rows} of the report's image grids."""
    out = {}
    titles = [h.all_text().strip() for h in doc.find_all("h4")]
    for title, table in zip(titles, doc.find_all("table", class_="grid")):
        out[title] = table.find_all("tbody")[0].find_all("tr")
    return out


def cell_srcs(row: Node) -> list[str | None]:
    """The image source of each of a grid row's three cells (None where the cell holds a note)."""
    return [(td.find_all("img") or [None])[0] and td.find_all("img")[0].attrs["src"] for td in row.find_all("td")]


def data_uri(b64: str) -> str:
    return "data:image/png;base64," + b64


# --------------------------------------------------------------------------------------------- tests
def test_report_is_self_contained_with_one_row_per_leaderboard_row(tmp_path):
    sources = [ROOT / "results" / "ci.jsonl", ROOT / "results" / "uce.jsonl"]
    out = write_report(sources, tmp_path / "out" / "report.html")
    doc = parse(out)
    df = build_standard(merge_records([(p, load_records(p)) for p in sources]))
    rows = doc.find_all("table", id="leaderboard-table")[0].find_all("tbody")[0].find_all("tr")
    assert [r.attrs["data-key"] for r in rows] == ["|".join(map(str, k)) for k in df[KEYS].itertuples(index=False)]
    mp = [r.find_all("td")[5] for r in rows]  # the MP column, sorted by its mean
    assert [float(td.attrs["data-sort"]) for td in mp] == pytest.approx(list(df["mitigation_power_mean"]))
    images = doc.find_all("img")
    assert len(images) >= 4  # Pareto plots and budget curves of two domains at least
    assert all(img.attrs["src"].startswith("data:image/") for img in images)
    for tag, attr in (("a", "href"), ("img", "src"), ("script", "src"), ("link", "href"), ("iframe", "src")):
        for node in doc.find_all(tag):
            assert not str(node.attrs.get(attr) or "").startswith(("http://", "https://", "//")), node.attrs
    assert not doc.find_all("link") and all("src" not in s.attrs for s in doc.find_all("script"))
    text = out.read_text()
    assert "made before thumbnails existed" in text  # committed records carry no thumbnails: a note, no failure
    footer = doc.find_all("footer")[0].all_text()
    assert all(str(p) in footer for p in sources) and "advbench 0.1.0" in footer


def test_thumbnails_fill_the_grid_from_the_lowest_common_seed(tmp_path):
    # The undefended seed-0 cell is missing, so every row's grid uses seed 1, the lowest seed both have.
    results = thumbnail_results(tmp_path, drop=lambda r: r["cell"]["defense"]["name"] == "none"
                                and r["cell"]["seed"] == 0)
    records = load_records(results)
    out = write_report([results], tmp_path / "report.html")
    found = grids(parse(out))
    assert set(found) == {"FG-30 vs fullft (compliant), seed 1", "R-30 vs fullft (compliant), seed 1"}
    for label in ("FG-30", "R-30"):
        defended = next(r for r in records if _key(r)[1] == label and r["cell"]["seed"] == 1)
        base = next(r for r in records if _key(r)[1] == "none" and r["cell"]["seed"] == 1)
        rows = found[f"{label} vs fullft (compliant), seed 1"]
        classes = defended["metrics"]["classes"]
        names = [r.find_all("th")[0].text.strip() for r in rows]
        assert names == [c for role in ("illegal", "legal") for c, v in classes.items() if v["role"] == role]
        for name, row in zip(names, rows):
            assert cell_srcs(row) == [data_uri(defended["thumbnails"]["classes"][name]["before"]),
                                      data_uri(defended["thumbnails"]["classes"][name]["after"]),
                                      data_uri(base["thumbnails"]["classes"][name]["after"])]


def test_grid_rows_show_the_class_references(tmp_path):
    records = [with_thumbnails(r) for r in load_records(CI)]
    for rec in records:  # the defended records keep references; the undefended ones predate them
        for cls, entry in rec["thumbnails"]["classes"].items():
            if rec["cell"]["defense"]["name"] != "none":
                entry["reference"] = encode_strip(strip_for("reference", cls))
            else:
                entry.pop("reference", None)
    found = grids(parse(write_report([write_jsonl(tmp_path / "r.jsonl", records)], tmp_path / "report.html")))
    assert found
    for title, rows in found.items():
        for row in rows:
            cls = row.find_all("th")[0].all_text().split("(")[0].strip()
            refs = [img.attrs["src"] for img in row.find_all("th")[0].find_all("img")]
            assert refs == [data_uri(encode_strip(strip_for("reference", cls)))], (title, cls)
    bare = grids(parse(write_report([thumbnail_results(tmp_path)], tmp_path / "bare.html")))
    assert all(not row.find_all("th")[0].find_all("img") for rows in bare.values() for row in rows)


def test_grid_cells_without_thumbnails_get_a_note(tmp_path):
    # Seed 0's undefended record predates thumbnails; R-30's records all do.
    results = thumbnail_results(tmp_path, bare=lambda r: (r["cell"]["defense"]["name"] == "none"
                                                          and r["cell"]["seed"] == 0) or _key(r)[1] == "R-30")
    out = write_report([results], tmp_path / "report.html")
    doc = parse(out)
    found = grids(doc)
    assert list(found) == ["FG-30 vs fullft (compliant), seed 0"]  # R-30's grid would be notes only
    for row in found["FG-30 vs fullft (compliant), seed 0"]:
        srcs = cell_srcs(row)
        assert srcs[0] and srcs[1] and srcs[2] is None
        assert row.find_all("td")[2].all_text().strip() == NO_THUMBNAILS
    notes = [p.all_text() for p in doc.find_all("p", class_="note")]
    assert any("R-30 vs fullft (compliant), seed 0" in n and "made before thumbnails existed" in n for n in notes)


def test_freezeasguard_mask_from_record_then_cache(tmp_path, monkeypatch):
    records = load_records(CI)
    fg = sorted((r for r in records if r["cell"]["defense"]["name"] == "freezeasguard"),
                key=lambda r: r["cell"]["seed"])
    fg[0]["defense_info"]["frozen_by_block"] = {"conv_in": 0.0, "down_blocks.0": 0.5, "mid_block": 1.0}
    key = next(s["key"] for s in fg[1]["stages"] if s["stage"] == "protect")
    artifacts = tmp_path / "cache" / "protect" / key / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "frozen_by_block.csv").write_text(
        "block,resnet,self-attn,frozen_tensors,tensors\nconv_in,,,1,2\ndown_blocks.0,0.25,0.0,1,8\n")
    cache = tmp_path / "cache"
    assert block_fractions(fg[0], cache) == {"conv_in": 0.0, "down_blocks.0": 0.5, "mid_block": 1.0}
    assert block_fractions(fg[1], cache) == {"conv_in": 0.5, "down_blocks.0": 0.125}
    assert block_fractions(fg[2], cache) is None  # neither in the record nor in the cache
    drawn = []
    import advbench.report_figures as figures

    real = figures.mask_heatmap
    monkeypatch.setattr(figures, "mask_heatmap", lambda fractions, title: drawn.append(fractions) or
                        real(fractions, title))
    results = write_jsonl(tmp_path / "fg.jsonl", records)
    out = write_report([results], tmp_path / "report.html", cache_dir=cache)
    assert drawn == [{"seed 0": fg[0]["defense_info"]["frozen_by_block"], "seed 1": {"conv_in": 0.5,
                                                                                     "down_blocks.0": 0.125}}]
    doc = parse(out)
    assert [i for i in doc.find_all("img") if i.attrs.get("alt", "").startswith("FG-30: frozen fraction")]
    # Without the cache and without the record's table, the section says where it looked.
    del fg[0]["defense_info"]["frozen_by_block"]
    out = write_report([write_jsonl(tmp_path / "fg.jsonl", records)], tmp_path / "bare.html",
                       cache_dir=tmp_path / "empty")
    notes = " ".join(" ".join(p.all_text().split()) for p in parse(out).find_all("p", class_="note"))
    assert "FreezeAsGuard mask not available for FG-30" in notes and str(tmp_path / "empty") in notes


def test_human_ratings_add_columns(tmp_path):
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame([{"domain": "portraits", "defense": "FG-30", "attack": "fullft", "threat_model": "compliant",
                   "role": role, "concept_mean": mean, "concept_std": 0.5, "quality_mean": 4.0, "quality_std": 1.0,
                   "raters": 2, "ratings": 6} for role, mean in (("illegal", 2.5), ("legal", 6.0))]
                 ).to_csv(ratings, index=False)
    out = write_report([CI], tmp_path / "report.html", ratings=ratings)
    table = parse(out).find_all("table", id="leaderboard-table")[0]
    headers = [th.text.strip() for th in table.find_all("th")]
    assert "human illegal concept" in headers and "human legal quality" in headers and "raters" in headers
    rows = {r.attrs["data-key"]: r.find_all("td") for r in table.find_all("tbody")[0].find_all("tr")}
    fg = rows["portraits|FG-30|fullft|compliant"]
    assert " ".join(fg[headers.index("human illegal concept")].all_text().split()) == "2.5 ± 0.5"
    assert fg[headers.index("human legal concept")].attrs["data-sort"] == "6.0"
    assert fg[headers.index("raters")].all_text() == "2"
    assert rows["portraits|R-30|fullft|compliant"][headers.index("human illegal concept")].attrs["data-sort"] == ""


def test_added_metrics_get_columns(tmp_path):
    records = load_records(CI)
    for n, rec in enumerate(records):  # every cell scored one more metric, as `--metric brightness` would add
        rec["cell"]["metrics"] = [{"name": "brightness", "params": {}}]
        rec["metrics"]["higher_is_better"]["brightness"] = True
        for scores in [rec["metrics"], *(rec["metrics"].get("curve") or [])]:  # the final budget and every budget
            scores["illegal"]["brightness"], scores["legal"]["brightness"] = 0.25 + n, 0.5
            for entry in scores["classes"].values():
                entry["values"]["brightness"] = 0.25 + n if entry["role"] == "illegal" else 0.5
    results = write_jsonl(tmp_path / "added.jsonl", records)
    table = parse(write_report([results], tmp_path / "report.html")).find_all("table", id="leaderboard-table")[0]
    headers = [th.all_text().replace("?", "").strip() for th in table.find_all("th")]
    assert "illegal brightness ↑" in headers and "legal brightness ↑" in headers
    df = build_standard(load_records(results))
    rows = {r.attrs["data-key"]: r.find_all("td") for r in table.find_all("tbody")[0].find_all("tr")}
    for _, row in df.iterrows():
        cell = rows["|".join(str(row[k]) for k in KEYS)][headers.index("illegal brightness ↑")]
        assert float(cell.attrs["data-sort"]) == pytest.approx(row["illegal_brightness_mean"])
    plain = parse(write_report([CI], tmp_path / "plain.html")).find_all("table", id="leaderboard-table")[0]
    assert not any("brightness" in th.all_text() for th in plain.find_all("th"))


def test_pareto_points_are_the_scores_the_table_ranks_by():
    # uce.jsonl ranks fullft and lora (four budgets) by MP-AUC and no-attack (one budget) by final MP;
    # with meta-defenses.jsonl (IMMA) some FreezeAsGuard and random rows fall off the Pareto front.
    from advbench.report_figures import Styles, budget_plot, pareto_plot, score_points

    paths = [ROOT / "results" / f for f in ("uce.jsonl", "freezeasguard.jsonl", "meta-defenses.jsonl")]
    df = build_standard(merge_records([(p, load_records(p)) for p in paths]))
    seen = []
    for domain, part in df.groupby("domain"):
        points = {(p["defense"], p["attack"], p["threat_model"]): p for p in score_points(part)}
        for _, row in part[part["defense"] != "none"].iterrows():
            point = points[(row["defense"], row["attack"], row["threat_model"])]
            assert point["score"] == row["rank_by"] and point["y"] == pytest.approx(row[row["rank_by"]])
            assert point["x"] == pytest.approx(row["legal_impact_mean"]) and point["pareto"] == bool(row["pareto"])
            seen.append((point["score"], point["pareto"]))
    assert {s for s, _ in seen} == {"mp_auc_mean", "mitigation_power_mean"} and {p for _, p in seen} == {True, False}
    styles = Styles(list(df["defense"]), list(df["attack"]))
    only_baseline = df[df["domain"] == "explicit (exposed)"]
    assert set(only_baseline["defense"]) == {"none"}
    assert pareto_plot(only_baseline, "x", styles) is None and budget_plot(only_baseline, "x", styles) is None
    assert pareto_plot(df[df["domain"] == "portraits"], "portraits", styles).startswith("data:image/png;base64,")


def _cli():
    from advbench.cli.main import _attach_commands, cli

    _attach_commands()
    return cli


@pytest.mark.parametrize("case", ["missing-results", "bad-line", "output-is-folder", "bad-ratings",
                                  "cache-is-file"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    out = tmp_path / "report.html"
    args = [str(CI), "-o", str(out)]
    expected = {"missing-results": "not found", "bad-line": "line 2", "output-is-folder": "is a folder",
                "bad-ratings": "lacks column", "cache-is-file": "is a file, not a folder"}[case]
    if case == "missing-results":
        args[0] = str(tmp_path / "nothing.jsonl")
    elif case == "bad-line":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(CI.read_text().splitlines()[0] + "\nnot json\n" + CI.read_text().splitlines()[1] + "\n")
        args[0] = str(bad)
    elif case == "output-is-folder":
        out.mkdir()
    elif case == "bad-ratings":
        (tmp_path / "r.csv").write_text("domain,defense\nportraits,FG-30\n")
        args += ["--ratings", str(tmp_path / "r.csv")]
    else:
        args += ["--cache", str(CI)]
    result = CliRunner().invoke(_cli(), ["report", *args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(errors) == 1 and len(result.stderr.strip().splitlines()) == 1 and expected in errors[0], result.stderr
    assert not out.is_file()


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = CliRunner().invoke(_cli(), ["report", str(CI), "-o", str(out), "--title", "CI <grid>"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<title>CI &lt;grid&gt;</title>" in text  # escaped, not markup
    assert f"wrote {out}" in result.stderr
