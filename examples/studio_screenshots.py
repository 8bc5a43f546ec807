"""The README's studio screenshots, taken from the real page: `python examples/studio_screenshots.py` serves
aa-studio on the shipped base, learns the bundled example in "Learn a person" (a quick adapter: 60 + 20 steps, not
decoupled, so the pictures take about a minute), generates with it in "Direct", and saves one PNG per tab under
docs/ (Chromium through Playwright)."""
from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from aa_studio.app import StudioConfig, launch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aa-shots-"))
    library = tmp / "library"
    library.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(StudioConfig(library=library, work=tmp / "work"), port=port, block=False)
    args.out.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#use-example input[type=checkbox]").check()
            page.get_by_role("button", name="1. Read the video").click()
            page.locator("#preview img").wait_for(state="visible", timeout=180_000)
            for elem, value in (("stage1", "60"), ("stage2", "20")):
                box = page.locator(f"#{elem} input[type=number]")
                box.fill(value)
                box.press("Enter")
            page.locator("#decouple input[type=checkbox]").uncheck()
            page.get_by_role("button", name="2. Learn").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('done')",
                                   timeout=600_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "studio-learn.png"), full_page=True)
            page.get_by_role("tab", name="Direct").click()
            page.get_by_role("button", name="Insert the identity's token").click()
            page.locator("#generate").click()
            page.wait_for_function("() => { const v = document.querySelector('#result-video video');"
                                   " return v && v.src; }", timeout=180_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "studio-direct.png"), full_page=True)
            page.get_by_role("tab", name="Identities").click()
            page.get_by_role("button", name="Refresh").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "studio-identities.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print("wrote", *sorted(str(p) for p in args.out.glob("studio-*.png")))


if __name__ == "__main__":
    main()
