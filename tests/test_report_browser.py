"""The HTML report in headless Chromium: the table's rows, sorting by a clicked header (the same order as a
Python sort), every image decoded, no console error, and a screenshot (``ADVBENCH_SCREENSHOT=path`` keeps a copy,
e.g. for ``docs/images/report.png``).

The report is made from ``results/ci.jsonl`` with thumbnails added to its records (see ``tests/test_report.py``)
and FreezeAsGuard's mask table in one record, so every kind of image the report has is on the page.
"""

from __future__ import annotations

import math
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


def test_report_in_a_browser(driver, report, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, df = report
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    initial = driver.execute_script(ROW_KEYS)
    assert initial == [_key(row) for _, row in df.iterrows()]

    headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard-table thead th")
    labels = [h.text.replace("?", "").strip() for h in headers]
    mp = {_key(row): (None if math.isnan(row["mitigation_power_mean"]) else row["mitigation_power_mean"])
          for _, row in df.iterrows()}
    headers[labels.index("MP")].click()
    ascending = driver.execute_script(ROW_KEYS)
    assert ascending == _sorted(initial, mp, descending=False)
    headers[labels.index("MP")].click()
    assert driver.execute_script(ROW_KEYS) == _sorted(ascending, mp, descending=True)
    assert headers[labels.index("MP")].get_attribute("aria-sort") == "descending"
    defense = {_key(row): row["defense"].casefold() for _, row in df.iterrows()}
    before = driver.execute_script(ROW_KEYS)
    headers[labels.index("defense")].click()
    assert driver.execute_script(ROW_KEYS) == _sorted(before, defense, descending=False)
    rank = {_key(row): None if pd.isna(row["rank"]) else float(row["rank"]) for _, row in df.iterrows()}
    before = driver.execute_script(ROW_KEYS)
    headers[labels.index("rank")].click()
    ranked = driver.execute_script(ROW_KEYS)
    assert ranked == _sorted(before, rank, descending=False)
    assert ranked[-1].split("|")[1] == "none"  # the unranked baseline stays last

    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    grid = [i for i in images if i[0] and not i[0].startswith(("Pareto", "Mitigation", "FG-30"))]
    assert len(grid) == 2 * 4 * 3  # FG-30 and R-30 grids: 4 classes × before, after, undefended
    assert any(i[0].startswith("FG-30: frozen fraction") for i in images)
    assert all(complete and width > 0 and src.startswith("data:image/png") for _, complete, width, src in images), \
        images
    assert console_errors(driver) == []

    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("ADVBENCH_SCREENSHOT"):
        target = Path(os.environ["ADVBENCH_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
