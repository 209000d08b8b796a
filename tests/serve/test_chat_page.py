"""The chat page in a real browser: Debian's chromium driven by Playwright (no browser download)."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/peers.sh chromium)"
)

COUNT_UPDATES = """() => {
  window.updates = 0;
  // one record per change: pieces that arrive in one network read still count one by one
  new MutationObserver(records => { window.updates += records.length; }).observe(document.getElementById("messages"),
    { subtree: true, characterData: true, childList: true });
}"""


def _ask(page, text: str) -> str:
    """Type a message, press Enter, wait for the answer to finish streaming; returns it."""
    page.evaluate(COUNT_UPDATES)
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length > 0 && !document.getElementById('send').disabled",
        timeout=60_000,
    )
    assert page.evaluate("window.updates") > 3  # the answer arrived in pieces
    return page.locator(".msg.assistant .text").last.inner_text()


def test_chat_page_streams_and_switches_adapters(served, live):
    from playwright.sync_api import sync_playwright

    bundle, adapters_dir = served
    server = live(
        bundle,
        "--adapter",
        f"alpha={adapters_dir / 'alpha'}",
        "--adapter",
        f"beta={adapters_dir / 'beta'}",
        "--model-name",
        "base",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').options.length === 3")
            assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["base", "alpha", "beta"]
            base_answer = _ask(page, "the quick brown fox")
            page.select_option("#model", "alpha")
            alpha_answer = _ask(page, "the quick brown fox")
            page.select_option("#model", "beta")
            beta_answer = _ask(page, "the quick brown fox")
            assert base_answer and alpha_answer and beta_answer
            assert len({base_answer, alpha_answer, beta_answer}) == 3
            assert page.locator(".msg.error").count() == 0
            page.screenshot(path=str(ARTIFACTS / "serve_chat_page.png"), full_page=True)
        finally:
            browser.close()
    assert shutil.os.path.getsize(ARTIFACTS / "serve_chat_page.png") > 5000
