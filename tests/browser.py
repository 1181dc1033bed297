"""Open a static report in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright for Python; no browser is ever downloaded) and check every
page: no console error, no page error, every <img> loaded, every relative link
resolving to a file inside the report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM = os.environ.get("ZFCORE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def available() -> str | None:
    """None when the browser tests can run, else why not."""
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    return None


def check_report(folder: Path, screenshot: Path | None = None) -> dict:
    """Visit every HTML page of ``folder``; returns per page the problems found
    (an empty list per page = clean) and the dialogs/scripts seen."""
    from playwright.sync_api import sync_playwright

    folder = Path(folder).resolve()
    pages = sorted(folder.glob("*.html"))
    problems: dict[str, list[str]] = {}
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=True)
        context.route("http://**/*", lambda route: route.abort())   # nothing may leave the machine
        context.route("https://**/*", lambda route: route.abort())
        page = context.new_page()
        current: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: current.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: current.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: current.append(f"request failed: {r.url}"))
        for path in pages:
            current.clear()
            page.goto(path.as_uri(), wait_until="load")
            page.evaluate("() => Promise.all(Array.from(document.images).map(i => { i.loading = 'eager'; "
                          "return i.decode().catch(() => null); }))")
            broken = page.evaluate("() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                                   ".map(i => i.getAttribute('src'))")
            found = list(current) + [f"image not loaded: {src}" for src in broken]
            for href in page.evaluate("() => Array.from(document.querySelectorAll('a[href]'))"
                                      ".map(a => a.getAttribute('href'))"):
                parsed = urlparse(href)
                if parsed.scheme or parsed.netloc or href.startswith("/"):
                    found.append(f"non-relative link: {href}")
                    continue
                target = (path.parent / unquote(parsed.path)).resolve() if parsed.path else path
                if folder not in target.parents or not target.is_file():
                    found.append(f"broken link: {href}")
            if screenshot is not None and path.name == "index.html":
                page.screenshot(path=str(screenshot), full_page=True)
            problems[path.name] = found
            page.goto("about:blank")
        browser.close()
    return {"pages": problems, "dialogs": dialogs}
