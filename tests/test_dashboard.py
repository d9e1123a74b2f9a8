"""The dashboard in a real headless Chromium (Debian's ``chromium`` +
``chromedriver``, driven by Selenium): the page loads and shows the models, a load
button loads a model, and a request appears in the recent-requests table."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually
from swapyard.testing import fake_engine_cmd, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.fail("no chromium/chromedriver: apt-get install chromium chromium-driver "
                    "(scripts/test does it when it can)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="swapyard-chromium-")
    # No background networking: this machine's network is closed, and Chromium's
    # own calls home would only fail (and slow its start).
    args = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
    ]  # fmt: skip
    for arg in args:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def test_dashboard_shows_models_loads_one_and_lists_requests(
    browser: Any, http: aiohttp.ClientSession
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    rendering = (WebDriverException,)  # not shown yet

    models = {
        "alpha": {"cmd": fake_engine_cmd("alpha", tokens_per_second=200)},
        "beta": {"cmd": fake_engine_cmd("beta", tokens_per_second=200)},
    }
    async with running_server(config(models, loading_status="off")) as srv:
        await asyncio.to_thread(browser.get, srv.url + "/")
        assert browser.title == "swapyard"

        def row(model: str) -> Any:
            return browser.find_element(By.CSS_SELECTOR, f'#models tr[data-model="{model}"]')

        await eventually(lambda: row("alpha") and row("beta"), interval=0.1, ignoring=rendering)
        assert "stopped" in await asyncio.to_thread(
            lambda: row("beta").find_element(By.CSS_SELECTOR, ".state").text
        )
        await asyncio.to_thread(
            lambda: row("beta").find_element(By.CSS_SELECTOR, "button.act-load").click()
        )
        await eventually(
            lambda: "ready" in row("beta").find_element(By.CSS_SELECTOR, ".state").text,
            interval=0.1,
            ignoring=rendering,
        )
        assert srv.router.model("beta").state.value == "ready"

        body = {"model": "beta", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8, "stream": True}  # fmt: skip
        async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
            await r.read()

        def request_row() -> Any:
            rows = browser.find_elements(By.CSS_SELECTOR, '#requests tr[data-model="beta"]')
            return rows and rows[0].find_element(By.CSS_SELECTOR, ".toks").text not in ("", "-")

        await eventually(request_row, interval=0.1, ignoring=rendering)
        cells = await asyncio.to_thread(
            lambda: browser.find_element(By.CSS_SELECTOR, '#requests tr[data-model="beta"]').text
        )
        assert "200" in cells and "→ 8" in cells


async def test_dashboard_shows_memory_held_by_other_processes(
    browser: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: on a (simulated) GPU, the device bar shows the foreign share."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    from swapyard.resources.gpu import Ledger, reset_reader

    ledger = Ledger.create(tmp_path / "gpu.json", {"0": 40 * 2**30})
    monkeypatch.setenv("SWAPYARD_SIMULATED_GPU", str(ledger.path))
    reset_reader()
    other = await asyncio.create_subprocess_exec("sleep", "120")
    try:
        assert ledger.allocate(other.pid, "0", 10 * 2**30)
        models = {"alpha": {"cmd": fake_engine_cmd("alpha"), "memory": "1GiB"}}
        async with running_server(config(models, loading_status="off")) as srv:
            await asyncio.to_thread(browser.get, srv.url + "/")

            def devices() -> str:
                text: str = browser.find_element(By.CSS_SELECTOR, "#devices").text
                return text if "others hold" in text else ""

            text = await eventually(devices, interval=0.1, ignoring=(WebDriverException,))
            assert "others hold 10.0 GiB" in text
            foreign = browser.find_element(By.CSS_SELECTOR, "#devices .foreign")
            assert foreign.get_attribute("title") == "held by processes swapyard did not start"
    finally:
        other.kill()
        await other.wait()
        reset_reader()
