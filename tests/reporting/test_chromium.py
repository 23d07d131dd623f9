"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) opens the page
offline, logs nothing to its console, and lays out every plot.

Driven through playwright (``executable_path`` the system Chromium) where it is installed: the
page's console errors, every request it makes and each plot's laid-out size are checked. Without
playwright, ``chromium --dump-dom`` with its console logged to stderr checks the rendered DOM and
the console. Skipped where Chromium is missing, except under CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from greenmaas.ledger import Ledger
from greenmaas.report import GROUPS
from greenmaas.reporting import html_report

CHROMIUM = os.environ.get("GREENMAAS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_BOXES = """() => {
    const out = {};
    for (const svg of document.querySelectorAll('svg.chart')) {
        const r = svg.getBoundingClientRect();
        const marks = svg.querySelectorAll('rect.bar, polyline.line, rect.band').length;
        (out[svg.dataset.chart] = out[svg.dataset.chart] || []).push({w: r.width, h: r.height, marks});
    }
    return out;
}"""


class Playwright:
    """Pages opened in one persistent Chromium context, refusing every request but the file."""

    def __init__(self, context):
        self.context = context

    def open(self, path: Path, screenshot: Path | None = None) -> dict:
        page = self.context.new_page()
        errors: list[str] = []
        refused: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def route(r):
            if r.request.url == path.as_uri():
                r.continue_()
            else:
                refused.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(path.as_uri(), wait_until="load")
        boxes = page.evaluate(_BOXES)
        empty = page.locator(".empty").count()
        total = page.locator("#summary tr.total").all_inner_texts()
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        page.close()
        return {"errors": errors, "refused": refused, "boxes": boxes, "empty": empty, "total": total}


class DumpDom:
    """``chromium --dump-dom``: the DOM after load, and the console as Chromium logs it."""

    def __init__(self, profile: Path):
        self.profile = profile

    def open(self, path: Path, screenshot: Path | None = None) -> dict:
        run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--enable-logging=stderr",
                              "--v=0", "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        errors = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        boxes: dict[str, list[dict]] = {}
        for kind, body in re.findall(r'<svg class="chart" data-chart="(\w+)".*?>(.*?)</svg>', run.stdout, re.S):
            marks = len(re.findall(r'class="(?:bar|line|band)"', body))
            boxes.setdefault(kind, []).append({"w": None, "h": None, "marks": marks})
        if screenshot is not None:
            subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--window-size=1100,2400",
                            f"--screenshot={screenshot}", path.as_uri()], capture_output=True, timeout=120, check=True)
        total = re.findall(r'<tr class="total">(.*?)</tr>', run.stdout, re.S)
        return {"errors": errors, "refused": [], "boxes": boxes, "empty": run.stdout.count('class="empty"'),
                "total": [re.sub(r"<[^>]+>", "\t", t).strip() for t in total]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        why = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield DumpDom(profile)
        return
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1100, "height": 900})
        try:
            yield Playwright(context)
        finally:
            context.close()


def test_the_report_renders_offline_with_its_plots(browser, demo, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(html_report(demo.path, by="model"), encoding="utf-8")
    shot = tmp_path / "report.png"
    seen = browser.open(path, screenshot=shot)
    assert seen["errors"] == [] and seen["refused"] == []
    boxes = seen["boxes"]
    assert len(boxes["time"]) == 2 and len(boxes["bars"]) == 2 and len(boxes["histogram"]) == 1
    for kind, found in boxes.items():
        for box in found:
            assert box["marks"] > 0, kind
            if box["w"] is not None:
                assert box["w"] > 400 and box["h"] > 80, (kind, box)
    (total,) = seen["total"]
    assert total.startswith("Total")
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("by", GROUPS)
def test_every_grouping_renders_without_errors(browser, demo, tmp_path, by):
    path = tmp_path / f"by-{by}.html"
    path.write_text(html_report(demo.path, by=by), encoding="utf-8")
    seen = browser.open(path)
    assert seen["errors"] == [] and seen["refused"] == []
    assert sum(len(v) for v in seen["boxes"].values()) >= 4


def test_an_empty_ledger_renders_its_messages(browser, tmp_path):
    db = tmp_path / "empty.db"
    Ledger.open(db).close()
    path = tmp_path / "empty.html"
    path.write_text(html_report(str(db)), encoding="utf-8")
    seen = browser.open(path)
    assert seen["errors"] == [] and seen["boxes"] == {} and seen["empty"] == 4


def test_console_errors_and_requests_are_caught(browser, demo, tmp_path):
    """The checks above can fail: a page that logs an error (and, in playwright, fetches) is seen."""
    path = tmp_path / "bad.html"
    text = html_report(demo.path).replace(
        "</body>", "<script>console.error('broken')</script><img src='https://example.invalid/x.png'></body>")
    path.write_text(text, encoding="utf-8")
    seen = browser.open(path)
    assert any("broken" in e for e in seen["errors"])
    if isinstance(browser, Playwright):
        assert seen["refused"] == ["https://example.invalid/x.png"]
