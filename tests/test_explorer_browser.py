"""The explorer in a real browser (Playwright, headless Debian chromium).

One test drives `stepchain devnet --validators 4 --demo --keep` to the end of its demo job
and browses it as a person would: no console errors, the live height rising over the
websocket, the job's page with its loss curves and the slashed cheater with the reason,
links from a tx to its block to an account; then Ctrl-C must stop every node (exit 0,
nothing left). The other puts markup in a moniker and a chart label: it must show as text.

On failure each test saves a screenshot: to $STEPCHAIN_ARTIFACTS when set (CI keeps that
directory), else to the test's tmp_path (pytest keeps the last few under
/tmp/pytest-of-$USER). $STEPCHAIN_SCREENSHOT, when set, is where the demo test saves the
job page on success (how docs/explorer-job.png was made).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.nodes import DevnetProcess, NodeProcess, pids_naming, run_cli

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("STEPCHAIN_CHROMIUM", "/usr/bin/chromium")
DEMO_TIMEOUT_S = 480
MARKUP = "<img src=x onerror='window.__pwned=1'><script>window.__pwned=2</script>"


@contextlib.contextmanager
def browser(tmp_path: Path, name: str):
    """A page in a fresh headless chromium profile; console errors collected in page.errors;
    a screenshot on failure. Chromium and Playwright's driver are gone when the block ends."""
    from playwright.sync_api import sync_playwright
    artifacts = Path(os.environ.get("STEPCHAIN_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / f"chromium-{name}"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, viewport={"width": 1280, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking"])  # the profile dir: Playwright passes --user-data-dir
        try:
            page = ctx.new_page()
            page.errors = []
            page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
            try:
                yield page
            except BaseException:
                shot = artifacts / f"explorer-{name}-failure.png"
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"screenshot of the failure: {shot}")
                raise
        finally:
            ctx.close()


def _json(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _height(page, selector: str = "#height") -> int:
    text = (page.text_content(selector) or "").replace(",", "")
    return int(text) if text.isdigit() else -1


def _wait_height_above(page, selector: str, value: int, timeout_s: float) -> int:
    """Poll the page's number from Python: the page's CSP forbids eval, which a string
    predicate for page.wait_for_function needs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        height = _height(page, selector)
        if height > value:
            return height
        page.wait_for_timeout(200)
    raise AssertionError(f"{selector} stayed at {_height(page, selector)}, not above {value}, for {timeout_s} s")


def _wallet(home: Path) -> dict[str, str]:
    keys = json.loads(run_cli("wallet", "list", "--json", "--home", str(home)).stdout)["keys"]
    return {row["name"]: row["address"] for row in keys}


def _check_live_height(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#chain-height")
    first = _wait_height_above(page, "#height", 0, 20)
    now = _wait_height_above(page, "#height", first, 20)  # the header follows /ws
    _wait_height_above(page, "#chain-height", now - 1, 5)  # and so does the chain page
    assert page.locator("#page tbody tr").count() >= 10  # recent blocks, the new ones on top


def _check_job(page, url: str, job: dict, cheater: str) -> None:
    page.click("header nav >> text=jobs")
    page.click(f"a[href='#/job/{job['id']}']")
    page.wait_for_selector("#job-shards")
    assert job["status"] in page.text_content("h1")
    slashed = [e for e in job["events"] if e[1] == "slashed" and e[2] == cheater]
    assert slashed, job["events"]  # the demo's cheater was caught (a fact of the chain, not of the page)
    rows = page.locator("#job-slashes tbody tr")
    texts = [rows.nth(i).text_content() for i in range(rows.count())]
    for height, _kind, _who, amount, note in slashed:
        assert any(note in t and f"{amount:,}" in t and cheater[:10] in t for t in texts), (note, texts)
    assert any("fraud" in e[4] for e in slashed)
    curves = job["curves"]
    verified = sum(p["verified"] for c in curves for p in c["points"])
    assert curves and verified > 0, curves  # a finished job: every shard's last interval is checked
    page.wait_for_selector("#loss-chart canvas")
    assert f"{verified} verified points" in page.text_content("#curve-summary")
    assert "verified" in page.text_content("#loss-chart .u-legend")


def _check_links(page, job: dict) -> None:
    """tx -> block -> account, from the job's own txs."""
    page.wait_for_selector("#job-txs tbody a[href^='#/tx/']")
    link = page.locator("#job-txs tbody a[href^='#/tx/']").first
    tx_hash = link.get_attribute("href").split("/")[-1]
    link.click()
    page.wait_for_selector("#tx-block a")
    assert page.locator(f"a[href='#/job/{job['id']}']").count() == 1  # and back to its job
    sender = page.locator("#tx-sender a").get_attribute("href").split("/")[-1]
    page.click("#tx-block a")
    page.wait_for_selector("#block-txs")
    assert page.locator(f"#block-txs a[href='#/tx/{tx_hash}']").count() == 1
    page.click(f"#block-txs tr:has(a[href='#/tx/{tx_hash}']) a[href='#/account/{sender}']")
    page.wait_for_selector("#account-txs")
    assert sender in page.text_content("h1")
    assert re.fullmatch(r"[\d,]+", page.text_content("#balance"))
    page.wait_for_selector(f"#account-txs a[href='#/tx/{tx_hash}']")


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_demo_job_in_a_real_browser(tmp_path):
    devnet = DevnetProcess(tmp_path / "devnet", "--validators", "4", "--demo", "--keep").start()
    try:
        url = re.search(r"explorer: (http://\S+?)/", devnet.wait_line("explorer: http", 60)).group(1)
        devnet.wait_line("demo done: the network stays up", DEMO_TIMEOUT_S)
        cheater = _wallet(devnet.base / "node0")["cheater"]
        jobs = _json(url + "/jobs/all")["jobs"]
        assert len(jobs) == 1 and jobs[0]["status"] == "done", jobs
        job = _json(f"{url}/job/{jobs[0]['id']}")
        job["curves"] = _json(f"{url}/job/{jobs[0]['id']}/curves")["curves"]
        with browser(tmp_path, "demo") as page:
            _check_live_height(page, url)
            _check_job(page, url, job, cheater)
            if os.environ.get("STEPCHAIN_SCREENSHOT"):
                page.screenshot(path=os.environ["STEPCHAIN_SCREENSHOT"], full_page=False)
            _check_links(page, job)
            page.click("header nav >> text=validators")
            page.wait_for_selector("text=missed (window)")
            page.click("header nav >> text=network")
            page.wait_for_selector("#peers tbody tr")
            assert page.locator("#peers tbody tr").count() == 3
            assert page.errors == [], page.errors
    finally:
        code = devnet.interrupt()
    assert code == 0, devnet.log()[-3000:]
    assert "all 4 node(s) stopped (exit codes [0, 0, 0, 0])" in devnet.log()
    assert pids_naming(devnet.base) == []


def test_markup_in_chain_strings_is_shown_as_text(tmp_path):
    node = NodeProcess.init_dev(tmp_path)
    cfg = node.home / "config.toml"
    text, n = re.subn(r'(?m)^moniker = ".*"$', 'moniker = "' + MARKUP.replace('"', '\\"') + '"', cfg.read_text())
    assert n == 1
    cfg.write_text(text)
    node.start()
    try:
        with browser(tmp_path, "markup") as page:
            page.goto(node.url + "/")
            page.wait_for_selector("#moniker")
            assert page.text_content("#moniker") == MARKUP
            page.click("header nav >> text=network")
            page.wait_for_selector("#peers")
            assert MARKUP in page.text_content("main")
            # a loss curve whose solver field carries markup: the chart draws, its legend is plain text
            page.evaluate("""async (markup) => {
                const { curveChart } = await import('/explorer/job.js');
                const pts = [0, 1, 2, 3].map((j) => ({interval: j, step: (j + 1) * 10, loss: 2 - j / 4, verified: j % 2 === 0}));
                document.getElementById('page').append(curveChart([{round: 0, shard: 0, solver: markup, k: 10, points: pts}]));
            }""", MARKUP)
            page.wait_for_selector("#loss-chart canvas")
            assert "verified" in page.text_content("#loss-chart .u-legend")
            assert page.locator("#page img, #page script").count() == 0
            assert page.evaluate("window.__pwned") is None
            assert page.errors == [], page.errors
    finally:
        assert node.stop() == 0
