"""Render the HTML report of the demo's ledger and save a screenshot of it under ``reports/``.

Run it with ``make html-report`` or ``python examples/render_report.py``: it runs the demo
(``examples/quickstart.py``: a small PyTorch training run and a few inference calls, measured on
whatever this machine offers) into a fresh ledger, writes ``greenmaas report --format html`` of it,
opens the page in headless Chromium (``/usr/bin/chromium``, Debian's package) and saves a
full-page screenshot. ``--ledger PATH`` renders an existing ledger instead of running the demo.

Chromium is driven through playwright where it is installed (the page's console errors are
printed and make the command fail), else through ``chromium --screenshot``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", help="render this ledger instead of running the demo")
    p.add_argument("--by", default="model", help="report grouping [model]")
    p.add_argument("--location", default="FR", help="grid location for carbon [FR]")
    p.add_argument("--html", type=Path, default=None, help="also keep the page here")
    p.add_argument("--png", type=Path, default=ROOT / "reports" / "html-report.png",
                   help="screenshot [reports/html-report.png]")
    p.add_argument("--chromium", default=os.environ.get("GREENMAAS_CHROMIUM") or shutil.which("chromium")
                   or "/usr/bin/chromium", help="Chromium executable [/usr/bin/chromium]")
    p.add_argument("--width", type=int, default=1100, help="viewport width in pixels [1100]")
    return p.parse_args(argv)


def run_demo(ledger: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    import quickstart

    quickstart.main(["--ledger", str(ledger), "--epochs", "3", "--epoch-seconds", "2", "--inference-calls", "12"])


def screenshot(chromium: str, page: Path, png: Path, width: int) -> list[str]:
    """Save a full-page screenshot of ``page``; return the console errors seen (playwright only)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},3000",
                            f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)
        return []
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS,
                                                       viewport={"width": width, "height": 900})
        tab = context.new_page()
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(page.as_uri(), wait_until="load")
        charts = tab.locator("svg.chart").count()
        print(f"{charts} plots on the page")
        tab.screenshot(path=str(png), full_page=True)
        context.close()
    return errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"Chromium not found at {args.chromium}: apt-get install chromium", file=sys.stderr)
        return 2
    from greenmaas.reporting import html_report

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(args.ledger) if args.ledger else Path(tmp) / "demo.db"
        if not args.ledger:
            run_demo(ledger)
        t0 = time.perf_counter()
        text = html_report(str(ledger), by=args.by, accounting={"location": args.location},
                           title=f"greenmaas demo: energy, carbon and cost by {args.by}")
        print(f"Rendered {len(text):,} bytes of HTML in {time.perf_counter() - t0:.2f} s")
        page = args.html or Path(tmp) / "report.html"
        page.write_text(text, encoding="utf-8")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        errors = screenshot(args.chromium, page, args.png, args.width)
    for e in errors:
        print(f"console error: {e}", file=sys.stderr)
    print(f"Saved {args.png}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
