"""The documentation site, built and opened in a real headless browser with no network.

Run with ``tox -e docs`` (which sets ``BNREF_REQUIRE_BROWSER=1``: a missing browser fails
the run there), or ``python -m pytest docs_tests`` with the ``docs`` extra installed.
The browser is Debian's Chromium (``apt-get install chromium``) at ``/usr/bin/chromium``,
driven by Playwright; Playwright's own browser downloads are never used.

``mkdocs build --strict`` builds the site into a temporary directory, a local HTTP server
on 127.0.0.1 serves it, and every page is opened once. Every request that would leave
127.0.0.1 is blocked and recorded: the site must need nothing from outside.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("BNREF_REQUIRE_BROWSER") == "1"
HOST = "127.0.0.1"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]
#: milliseconds for one page to load and typeset (two shared cores, MathJax on long pages)
PAGE_TIMEOUT_MS = 120_000

#: raw TeX left in text a reader sees: delimiters, a $...$ span, a control sequence
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\$[^$\s][^$\n]*\$|\\[A-Za-z]+")

# pages' visible text outside code blocks, and their table-of-contents entries
VISIBLE_PROSE_JS = """() => {
  const root = document.querySelector("article") || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (parent.closest("pre, code, script, style, mjx-assistive-mml")) continue;
    if (!parent.checkVisibility()) continue;
    parts.push(node.textContent);
  }
  return parts.join("");
}"""
TOC_JS = """() => Array.from(document.querySelectorAll("nav.md-nav--secondary a.md-nav__link"),
                        a => a.textContent.trim())"""
MATH_JS = """async () => {
  const formulas = document.querySelectorAll(".arithmatex");
  if (formulas.length && window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  return {
    formulas: formulas.length,
    typeset: Array.from(formulas).filter(f => {
      const box = f.querySelector("mjx-container")?.getBoundingClientRect();
      return box && box.width > 0 && box.height > 0;
    }).length,
    errors: Array.from(document.querySelectorAll("mjx-merror"), e => e.textContent),
  };
}"""


def unavailable(reason: str) -> None:
    """Skip, or fail where the browser test is required (tox -e docs)."""
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason} (BNREF_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Visit:
    """What one page did when opened: its problems, its text, its table of contents, its math."""
    path: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    prose: str = ""
    toc: list[str] = field(default_factory=list)
    math: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` (a warning fails it) into a temporary directory."""
    site_dir = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(ROOT / "mkdocs.yml"), "--site-dir", str(site_dir)],
                           cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}", pytrace=False)
    return site_dir


@pytest.fixture(scope="module")
def server(site):
    """The base URL of the site served over HTTP on 127.0.0.1 (a free port)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    httpd = http.server.ThreadingHTTPServer((HOST, 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the site, as a path relative to its root."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith("assets/"))


@pytest.fixture(scope="module")
def visits(site, server) -> dict[str, Visit]:
    """Every page opened once in headless Chromium, keyed by its path."""
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright not installed: pip install -e '.[docs]'")

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        context = browser.new_context(service_workers="block")
        try:
            for path in site_pages(site):
                results[path] = visit(context, server, path)
        finally:
            context.close()
            browser.close()
    return results


def visit(context, server: str, path: str) -> Visit:
    record = Visit(path)

    def route(route):
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != HOST:
            record.external_requests.append(url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.route("**/*", route)
    page.on("console", lambda msg: record.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: record.page_errors.append(str(error)))
    page.on("requestfailed", lambda request: record.failed_requests.append(
        f"{request.url}: {request.failure}") if urlsplit(request.url).hostname == HOST else None)
    page.on("response", lambda response: record.failed_requests.append(
        f"{response.url}: HTTP {response.status}") if response.status >= 400 else None)
    try:
        page.goto(server + path, wait_until="load")
        record.math = page.evaluate(MATH_JS)
        record.prose = page.evaluate(VISIBLE_PROSE_JS)
        record.toc = page.evaluate(TOC_JS)
    finally:
        page.close()
    return record


def problems(visits: dict[str, Visit], attribute: str) -> dict[str, list[str]]:
    return {path: getattr(v, attribute) for path, v in visits.items() if getattr(v, attribute)}


def test_the_browser_opened_every_page(visits, site):
    assert set(visits) == set(site_pages(site))
    assert {"index.html", "derivation/index.html", "proofs/index.html"} <= set(visits)
    assert len([p for p in visits if p.startswith("proofs/")]) >= 4    # the generated proof pages


def test_no_page_logs_a_javascript_error(visits):
    assert problems(visits, "page_errors") == {}
    assert problems(visits, "console_errors") == {}


def test_no_request_leaves_localhost(visits):
    assert problems(visits, "external_requests") == {}


def test_every_local_resource_loads(visits):
    assert problems(visits, "failed_requests") == {}


def test_the_derivation_math_is_typeset(visits):
    derivation = visits["derivation/index.html"]
    assert derivation.math["formulas"] > 50
    assert derivation.math["typeset"] == derivation.math["formulas"]
    assert derivation.math["errors"] == []
    assert RAW_TEX.findall(derivation.prose) == []


def test_every_page_math_is_typeset(visits):
    untypeset = {path: v.math for path, v in visits.items()
                 if v.math.get("typeset") != v.math.get("formulas") or v.math.get("errors")}
    assert untypeset == {}
    raw = {path: RAW_TEX.findall(v.prose) for path, v in visits.items() if v.math.get("formulas")}
    assert {path: found for path, found in raw.items() if found} == {}


def test_no_toc_entry_has_raw_tex(visits):
    assert len(visits["derivation/index.html"].toc) >= 11    # the steps of the derivation
    raw = {path: [entry for entry in v.toc if "\\" in entry or "$" in entry] for path, v in visits.items()}
    assert {path: entries for path, entries in raw.items() if entries} == {}


# external URLs in attributes that make the browser load something (links to read are fine)
LOADED_URL = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=\"?((?:https?:)?//[^\"> ]+)")


def test_no_page_loads_anything_from_outside(site):
    """Without a browser: no page names an external script, stylesheet, font or image to load."""
    loaded = {p: LOADED_URL.findall(Path(site, p).read_text(encoding="utf-8")) for p in site_pages(site)}
    assert {p: urls for p, urls in loaded.items() if urls} == {}
