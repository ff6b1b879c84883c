"""The HTML report in headless Chromium: the table's rows, sorting by a clicked header (the same order as a
Python sort), every image decoded, no console error, and a screenshot.

Two reports: one made here from ``results/ci.jsonl`` with thumbnails added to its records (see
``tests/test_report.py``) and FreezeAsGuard's mask table in one record, so every kind of image the report has is
on the page; and the committed ``leaderboards/report.html``, whose rows must be those of the committed
``leaderboards/standard.csv`` (both are made from the same results files: leaderboards/README.md). Its screenshot
(the table, one domain's plots and its image grids, stitched) is ``docs/images/report.png``:
``ADVBENCH_SCREENSHOT=docs/images/report.png python -m pytest tests/test_report_browser.py`` rewrites it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from advbench.cli.leaderboard import load_records
from advbench.leaderboard import KEYS
from advbench.report import write_report
from advbench.standard import build_standard
from tests.browser import chrome, console_errors

ROOT = Path(__file__).resolve().parent.parent
COMMITTED, STANDARD = ROOT / "leaderboards" / "report.html", ROOT / "leaderboards" / "standard.csv"
from tests.test_report import CI, with_thumbnails, write_jsonl

ROW_KEYS = "return Array.from(document.querySelectorAll('#leaderboard-table tbody tr')).map(r => r.dataset.key)"


@pytest.fixture
def driver():
    yield from chrome()


@pytest.fixture
def report(tmp_path):
    records = [with_thumbnails(r) for r in load_records(CI)]
    for rec in records:
        if rec["cell"]["defense"]["name"] == "freezeasguard":
            rec["defense_info"]["frozen_by_block"] = {"conv_in": 0.0, "down_blocks.0": 0.4, "mid_block": 0.9}
    results = write_jsonl(tmp_path / "ci-thumbs.jsonl", records)
    path = write_report([results], tmp_path / "report.html", title="advbench report: ci.jsonl")
    return path, build_standard(load_records(results))


def _key(row) -> str:
    return "|".join(str(row[k]) for k in KEYS)


def _sorted(keys: list[str], value, descending: bool) -> list[str]:
    """Python's version of the page's sort: stable, by value, missing values last in both directions."""
    present = [k for k in keys if value[k] is not None]
    missing = [k for k in keys if value[k] is None]
    return sorted(present, key=lambda k: value[k], reverse=descending) + missing


def _open(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))


def _number(value) -> float | None:
    number = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(number) else float(number)


def _check_sorting(driver, df: pd.DataFrame, text: bool = True) -> None:
    """Clicking MP sorts ascending, again descending; defense sorts as text (``text``: the page's natural order,
    ``localeCompare``, equals Python's casefold order on simple names only); rank keeps the baselines last."""
    from selenium.webdriver.common.by import By

    initial = driver.execute_script(ROW_KEYS)
    headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard-table thead th")
    labels = [h.text.replace("?", "").strip() for h in headers]
    mp = {_key(row): _number(row["mitigation_power_mean"]) for _, row in df.iterrows()}
    headers[labels.index("MP")].click()
    ascending = driver.execute_script(ROW_KEYS)
    assert ascending == _sorted(initial, mp, descending=False) and ascending != initial
    headers[labels.index("MP")].click()
    assert driver.execute_script(ROW_KEYS) == _sorted(ascending, mp, descending=True)
    assert headers[labels.index("MP")].get_attribute("aria-sort") == "descending"
    if text:
        defense = {_key(row): row["defense"].casefold() for _, row in df.iterrows()}
        before = driver.execute_script(ROW_KEYS)
        headers[labels.index("defense")].click()
        assert driver.execute_script(ROW_KEYS) == _sorted(before, defense, descending=False)
    rank = {_key(row): _number(row["rank"]) for _, row in df.iterrows()}
    before = driver.execute_script(ROW_KEYS)
    headers[labels.index("rank")].click()
    ranked = driver.execute_script(ROW_KEYS)
    assert ranked == _sorted(before, rank, descending=False)
    assert ranked[-1].split("|")[1] == "none"  # the unranked baselines stay last


def _images(driver) -> list[list]:
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    assert all(complete and width > 0 and src.startswith("data:image/png") for _, complete, width, src in images), \
        images
    return images


def test_report_in_a_browser(driver, report, tmp_path):
    path, df = report
    _open(driver, path)
    assert driver.execute_script(ROW_KEYS) == [_key(row) for _, row in df.iterrows()]
    _check_sorting(driver, df)
    images = _images(driver)
    grid = [i for i in images if i[0] and not i[0].startswith(("Pareto", "Mitigation", "FG-30"))]
    assert len(grid) == 2 * 4 * 3  # FG-30 and R-30 grids: 4 classes × before, after, undefended
    assert any(i[0].startswith("FG-30: frozen fraction") for i in images)
    assert console_errors(driver) == []
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"


def _tour(driver, out: Path) -> None:
    """One picture of the page a reader scrolls through: the top of the table, the domain of the first image grid
    without a gap (its plots) and that grid onwards, each cut where the next begins, stitched at 3/4 size."""
    from PIL import Image

    tops = driver.execute_script("""
        const y = e => Math.round(e.getBoundingClientRect().top + window.scrollY) - 8;
        // the first grid without a gap (an image in every cell), else the one with most images
        const grids = Array.from(document.querySelectorAll('table.grid'));
        const full = g => g.querySelectorAll('td').length === g.querySelectorAll('td img').length;
        const grid = grids.find(full) || grids.reduce((best, g) =>
            g.querySelectorAll('td img').length > best.querySelectorAll('td img').length ? g : best);
        const heading = Array.from(document.querySelectorAll('h2')).filter(h => y(h) < y(grid)).pop();
        return [0, y(heading), y(grid.previousElementSibling)];""")
    pieces = []
    for n, top in enumerate(tops):
        scrolled = driver.execute_script(f"window.scrollTo(0, {top}); return window.scrollY")
        file = out.with_name(f"{out.stem}-{n}.png")
        assert driver.save_screenshot(str(file))
        shot = Image.open(file).convert("RGB")
        end = tops[n + 1] if n + 1 < len(tops) else top + shot.height
        height = min(end - top, 1000 if n == 0 else shot.height, shot.height - (top - scrolled))
        pieces.append(shot.crop((0, top - scrolled, shot.width, top - scrolled + height)))
    page = Image.new("RGB", (pieces[0].width, sum(p.height for p in pieces)), "white")
    y = 0
    for piece in pieces:
        page.paste(piece, (0, y))
        y += piece.height
    page = page.resize((page.width * 3 // 4, page.height * 3 // 4), Image.Resampling.LANCZOS)
    # 256 colours: a third of the bytes of true colour, and the text and plots look the same
    page.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)


def test_committed_report_in_a_browser(driver, tmp_path):
    assert COMMITTED.is_file() and STANDARD.is_file(), "run benchmarks/make_report.sh (leaderboards/README.md)"
    _open(driver, COMMITTED)
    standard = pd.read_csv(STANDARD, dtype={k: str for k in KEYS})
    assert driver.execute_script(ROW_KEYS) == [_key(row) for _, row in standard.iterrows()], \
        "leaderboards/report.html and standard.csv come from different results: regenerate both"
    shot = tmp_path / "report.png"
    _tour(driver, shot)  # before any click: the table in its published order
    driver.execute_script("window.scrollTo(0, 0)")
    _check_sorting(driver, standard, text=False)  # labels like R[p=0.1], R-30%params: collation differs
    _images(driver)
    grids = driver.execute_script("return document.querySelectorAll('table.grid').length")
    # every defense of the rows that carry thumbnails has its grid (the committed regression results do)
    assert grids >= len({d for d in standard.loc[standard["domain"] == "portraits-small", "defense"] if d != "none"})
    assert console_errors(driver) == []
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("ADVBENCH_SCREENSHOT"):
        target = Path(os.environ["ADVBENCH_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
