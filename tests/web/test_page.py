"""The page at / in a real browser (issue 22): headless Debian chromium driven by Playwright, against a
live `voxagent serve` on 127.0.0.1 with the shipped model.

Flow: a refused upload shows its problem+json message; the MNI template is uploaded, a measuring prompt
and a segmenting prompt run (the shipped tiny model answers each kind with its own program), and the
page's answer, metrics table, NiiVue canvas and mask download are checked against the API's own
answers. Every wait is on a DOM state with a bound; no sleep stands in for an assertion.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx
import nilearn
import numpy as np
import pytest
from PIL import Image

from tests.service import procs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MNI_T1 = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
CHROMIUM = "/usr/bin/chromium"
JOB_TIMEOUT_MS = 240_000  # the first job loads the models into the server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    env = procs.base_env(tmp / "data")
    key = procs.make_key(env, "web")
    proc, url = procs.start_api(env, tmp)
    yield url, key
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium missing: `make system-deps` installs the Debian package"
    with sync_playwright() as p:
        # SwiftShader: WebGL2 for NiiVue without a GPU
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"])
        yield b
        b.close()


def run_prompt(page, prompt: str) -> str:
    """Submit the form with ``prompt`` and wait until the page shows the finished job; returns its id."""
    previous = page.locator("#job-id").text_content() or ""
    page.fill("#prompt", prompt)
    page.click("#submit")
    page.wait_for_function(
        """prev => { const id = document.querySelector('#job-id').textContent;
                     return id && id !== prev && !document.querySelector('#result').hidden
                       && /^(succeeded|failed|cancelled)/.test(document.querySelector('#job-status').textContent); }""",
        arg=previous, timeout=JOB_TIMEOUT_MS)
    return page.locator("#job-id").text_content() or ""


def test_page_runs_prompts_and_shows_answers_metrics_viewer_and_downloads(server, browser, tmp_path):
    url, key = server
    headers = {"X-API-Key": key}
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")
    assert page.evaluate("sessionStorage.getItem('voxagent.apiKey')") == key

    # a refused upload: the service's problem+json detail, shown as is
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all" * 20)
    page.set_input_files("#files", str(bad))
    page.fill("#prompt", "Segment the brain on the T1.")
    page.click("#submit")
    page.wait_for_selector("#problem:not([hidden])", timeout=30_000)
    shown = page.locator("#problem").inner_text()
    r = httpx.post(url + "/v1/volumes", headers=headers, files={"file": ("broken.nii.gz", bad.read_bytes())})
    assert r.status_code in (400, 413, 415, 422) and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] in shown and str(r.status_code) in shown
    page.click("#scan-table button")  # remove the broken file

    page.set_input_files("#files", str(MNI_T1))
    page.fill("#scan-table tbody tr input[type=text]", "t1")
    page.select_option("#scan-table tbody tr select", "T1")

    # 1) a measurement: answer and metrics table as the API has them
    page.select_option("#example", "What is the brain volume on the T1?")
    job_id = run_prompt(page, page.input_value("#prompt"))
    job = httpx.get(f"{url}/v1/analyses/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["metrics"], result
    assert job["progress"]["max_steps"] >= job["progress"]["step"] >= 1  # what "step k of n" showed
    assert page.locator("#answer").inner_text().strip() == result["text"].strip()
    rows = page.locator("#metrics tbody tr")
    assert rows.count() == len(result["metrics"])
    for i, m in enumerate(result["metrics"]):
        cells = rows.nth(i).locator("th, td")
        assert cells.nth(0).inner_text() == m["name"]
        assert float(cells.nth(1).inner_text()) == pytest.approx(float(m["value"]), rel=1e-5)
        assert cells.nth(2).inner_text() == (m["unit"] or "")
        if m["step"] is not None:  # the number links to the step that computed it
            assert cells.nth(1).locator("a").get_attribute("href") == f"#step-{m['step']}"
            assert page.locator(f"#step-{m['step']} code").first.inner_text() == result["trace"][m["step"]]["code"]
    assert page.locator("#trace > li").count() == len(result["trace"])

    # 2) a segmentation: the mask over the scan in NiiVue, the snapshot, the download
    job_id = run_prompt(page, "Segment the brain on the T1.")
    job = httpx.get(f"{url}/v1/analyses/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job
    (out,) = [o for o in job["result"]["outputs"] if o["kind"] == "mask"]
    page.wait_for_selector("figure.viewer[data-loaded=true]", timeout=60_000)
    page.wait_for_function("(img => img && img.complete && img.naturalWidth > 0)"
                           "(document.querySelector('#snapshots img'))", timeout=30_000)
    shot = np.asarray(Image.open(io.BytesIO(page.locator("figure.viewer canvas").first.screenshot())).convert("RGB"))
    lit = (shot.max(axis=2) > 40).sum()
    assert lit > 0.05 * shot.shape[0] * shot.shape[1], f"viewer canvas nearly blank ({lit} lit pixels)"
    reddish = ((shot[..., 0].astype(int) - shot[..., 1]) > 60).sum()
    assert reddish > 100, "no mask overlay (red) on the viewer canvas"

    if shots := os.environ.get("VOXAGENT_WEB_SCREENSHOTS"):  # README pictures: docs/web-*.png
        page.locator("#result").scroll_into_view_if_needed()
        page.locator("#result").screenshot(path=f"{shots}/web-result.png")
    with page.expect_download(timeout=30_000) as info:
        page.click(f"#downloads button[data-download='{out['name']}']")
    got = Path(info.value.path()).read_bytes()
    api_bytes = httpx.get(url + job["links"][f"output:{out['name']}"], headers=headers).content
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(api_bytes).hexdigest()

    # narrow screen: no horizontal scrolling of the page itself (a wide table scrolls inside its box)
    page.set_viewport_size({"width": 380, "height": 800})
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.table-scroll'))
        .map(e => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)""")
    assert not wide, f"wider than a 380 px screen: {wide[:8]}"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    if shots := os.environ.get("VOXAGENT_WEB_SCREENSHOTS"):  # README pictures: docs/web-*.png
        page.screenshot(path=f"{shots}/web-narrow.png")
    assert not errors, errors
    context.close()
