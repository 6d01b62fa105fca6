"""`rise report` in a real browser: the report of a real tiny run, opened from disk in headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium).

It checks what a reader sees: the charts are drawn (SVG, one series per model), each filter
shows the count computed by hand from episodes.jsonl and selects that many episodes, opening an
episode shows every attempt and its line diff against the attempt before, beside the same
problem under the other models, and the page logged no JavaScript error. The screenshot is left
in the test's tmp folder. `.ci/run` installs Chromium when it is missing and sets
RISE_BROWSER_TEST=required, so there this test fails rather than skips without a browser.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import expected_filter_counts

LABELS = ["base", "iter1", "iter2"]


def _chromium() -> tuple[str, str] | None:
    binary = next(
        (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))),
        None,
    )
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        found = None
    if found is None:
        why = "Chromium, chromedriver or selenium is missing (apt-get install chromium-driver)"
        if os.environ.get("RISE_BROWSER_TEST") == "required":
            pytest.fail(why)
        pytest.skip(why)
    binary, driver = found
    options = Options()
    options.binary_location = binary
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1300,1800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def _count(browser, selector: str) -> int:
    return browser.execute_script(f"return document.querySelectorAll({selector!r}).length")


@pytest.mark.slow
def test_report_of_a_real_run_in_chromium(browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get((tiny_run / "report.html").as_uri())
    WebDriverWait(browser, 60).until(
        lambda b: b.execute_script("return document.body.dataset.ready") == "1"
    )
    # the charts are drawn as SVG with one series per model (the loss: per trained iteration)
    for chart, layer, series in (
        ("chart-acc", "scatterlayer", LABELS),
        ("chart-summary", "barlayer", LABELS),
        ("chart-loss", "scatterlayer", ["iter1 training loss", "iter2 training loss"]),
    ):
        assert _count(browser, f"#{chart} svg.main-svg") >= 1, chart
        assert _count(browser, f"#{chart} .{layer} .trace") == len(series), chart
        legend = browser.execute_script(
            f"return [...document.querySelectorAll('#{chart} .legendtext')].map(e => e.textContent)"
        )
        assert legend == series, chart

    browser.save_screenshot(str(tmp_path / "report-top.png"))  # the curves, as a reader opens it

    # every filter shows the count computed from episodes.jsonl and lists that many episodes
    select = Select(browser.find_element(By.ID, "model-select"))
    for label in LABELS:
        select.select_by_value(label)
        expected = expected_filter_counts(tiny_run / label / "eval" / "episodes.jsonl")
        buttons = browser.find_elements(By.CSS_SELECTOR, "#filters button.filter")
        shown = {
            b.get_attribute("data-filter"): b.find_element(By.CLASS_NAME, "count").text
            for b in buttons
        }
        assert shown == {k: str(v) for k, v in expected.items()}, label
        for key, count in expected.items():
            browser.find_element(By.CSS_SELECTOR, f'button[data-filter="{key}"]').click()
            assert browser.find_element(By.ID, "episode-list").get_attribute("data-matches") == str(
                count
            )
            assert _count(browser, "#episode-list .episode-row") == min(count, 100)
    browser.find_element(By.CSS_SELECTOR, 'button[data-filter="all"]').click()

    # search a problem whose second attempt differs from its first, and open it
    select.select_by_value("base")
    episodes = [json.loads(line) for line in (tiny_run / "base/eval/episodes.jsonl").open()]
    changed = next(
        e
        for e in episodes
        if e["mode"] == "no_oracle" and e["turns"][0]["response"] != e["turns"][1]["response"]
    )
    search = browser.find_element(By.ID, "search")
    search.send_keys(changed["problem_id"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#episode-list .episode-row")
    assert [r.get_attribute("data-problem") for r in rows] == [changed["problem_id"]]
    rows[0].click()
    WebDriverWait(browser, 30).until(
        lambda b: (
            b.find_element(By.ID, "episode-detail").get_attribute("data-problem")
            == changed["problem_id"]
        )
    )
    columns = browser.find_elements(By.CSS_SELECTOR, "#episode-detail .column")
    assert [c.get_attribute("data-model") for c in columns] == LABELS  # side by side
    base = columns[0]
    attempts = base.find_elements(By.CSS_SELECTOR, ".attempt")
    assert len(attempts) == len(changed["turns"])
    first, second = changed["turns"][0], changed["turns"][1]
    assert (
        f"reward {second['reward']}" in attempts[1].find_element(By.CLASS_NAME, "attempt-head").text
    )
    diff = attempts[1].find_elements(By.CSS_SELECTOR, ".diff .line")
    assert diff, "no diff against the attempt before"
    marked = [(line.get_attribute("class").split()[1], line.text[1:].strip()) for line in diff]
    # the diff turns the first attempt into the second: read without its added lines it is the
    # first, without its removed lines the second (line-end whitespace aside: .text drops it)
    assert [text for kind, text in marked if kind != "ins"] == [
        x.strip() for x in first["response"].split("\n")
    ]
    assert [text for kind, text in marked if kind != "del"] == [
        x.strip() for x in second["response"].split("\n")
    ]
    assert {kind for kind, _ in marked} & {"ins", "del"}

    browser.save_screenshot(str(tmp_path / "report-episode.png"))
    for shot in ("report-top.png", "report-episode.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
