"""The page of `musicldm serve` in a real browser: headless Chromium from Debian's packages, driven by
playwright's Python package (its own browser download is not used: `executable_path` is the system's).

It fills the prompt, clicks Generate and waits for the audio; the file behind the player is a WAV of the
asked length, the progress bar moved, the mel picture loaded, and a bad value shows its message by its
field. Set MUSICLDM_SCREENSHOT=PATH to keep a picture of the page after the run (docs/serve.png).
"""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest
import soundfile as sf

from test_serve import Running, pipe  # noqa: F401  (the tiny pipeline fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        missing = "Debian's chromium" if CHROMIUM is None else "playwright"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is not installed: .ci/run installs it for this test")
        pytest.skip(f"{missing} is not installed (apt-get install chromium; pip install playwright)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_generate_in_the_browser(browser, pipe, tiny_ckpt, tmp_path):  # noqa: F811
    (tmp_path / "out").mkdir()
    server = Running(pipe, tmp_path / "out", tiny_ckpt)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://localhost:{server.server.port}/")
        page.get_by_label("Prompt", exact=True).fill("warm piano chords over soft rain")

        # a bad value is named by its field, and nothing is queued
        page.fill("#seconds", "-1")
        page.get_by_role("button", name="Generate").click()
        error = page.locator('.error[data-for="seconds"]')
        error.wait_for(state="visible", timeout=10_000)
        assert "seconds must be" in error.inner_text()
        assert server.request("GET", "/api/jobs")[1]["jobs"] == []
        page.fill("#steps", "x1")
        page.get_by_role("button", name="Generate").click()
        assert "steps must be an integer" in page.locator('.error[data-for="steps"]').inner_text()

        # a good one: the progress bar moves with the steps, then a player and the mel picture
        page.fill("#seconds", "0.64")
        page.fill("#steps", "30")
        page.fill("#seed", "7")
        page.evaluate("""() => { window.seen = []; setInterval(() => {
            const bar = document.querySelector('progress'); if (bar) window.seen.push(bar.value); }, 20); }""")
        began = time.monotonic()
        page.get_by_role("button", name="Generate").click()
        player = page.locator("audio")
        player.wait_for(timeout=120_000)
        page.wait_for_function("document.querySelector('audio').readyState >= 1", timeout=30_000)
        took = time.monotonic() - began
        print(f"[serve] tiny checkpoint, 30 steps, 0.64 s: Generate -> playable audio in {took:.2f} s")
        assert page.locator('.error[data-for="seconds"]').inner_text() == ""
        seen = page.evaluate("window.seen")
        assert any(0 < v < 1 for v in seen), f"the progress bar never moved: {seen[:20]}"

        source = player.get_attribute("src")
        response = page.request.get(f"http://localhost:{server.server.port}{source}")
        assert response.ok
        audio, rate = sf.read(io.BytesIO(response.body()))
        assert rate == 16000 and audio.shape == (10240,)  # the asked 0.64 s

        page.wait_for_function("(() => { const m = document.querySelector('img.mel');"
                               " return m && m.complete && m.naturalWidth === 64; })()", timeout=30_000)
        assert "seed 7" in page.locator("article.job .meta").first.inner_text()
        command = page.locator("article.job code").first.inner_text()
        assert command.startswith("musicldm 'warm piano chords over soft rain'") and "--seed 7" in command
        shot = os.environ.get("MUSICLDM_SCREENSHOT")
        page.screenshot(path=shot or str(tmp_path / "page.png"), full_page=True)
    finally:
        server.close()


def test_a_prompt_is_shown_as_text_and_no_injected_script_runs(browser, pipe, tiny_ckpt, tmp_path):  # noqa: F811
    """A prompt holding HTML is shown as its text (no element is made from it), and the page's
    Content-Security-Policy lets only its own script run: an inline handler injected by hand does nothing."""
    (tmp_path / "out").mkdir()
    server = Running(pipe, tmp_path / "out", tiny_ckpt)
    try:
        page = browser.new_page()
        page.goto(f"http://localhost:{server.server.port}/")
        prompt = '<img src=x onerror="window.pwned = 1"><b id="bold">rain</b>'
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.fill("#steps", "2")
        page.fill("#seconds", "0.2")
        page.get_by_role("button", name="Generate").click()
        page.locator("article.job").first.wait_for(timeout=60_000)
        assert page.locator("article.job").first.inner_text().count(prompt) >= 1
        assert page.locator("article.job img[src='x'], #bold").count() == 0
        # even an element made by hand (as a bug in the page would) runs no inline handler
        page.evaluate("""() => { const d = document.createElement('div');
            d.innerHTML = '<img src=y onerror="window.pwned = 2">'; document.body.appendChild(d); }""")
        time.sleep(0.5)
        assert page.evaluate("window.pwned") is None
    finally:
        server.close()


def test_a_clip_and_a_schedule_in_the_browser(browser, pipe, tiny_ckpt, tmp_path):  # noqa: F811
    """An audio-prompted job (the "Like this clip" upload, no prompt), then a travelling one (a schedule):
    each plays a WAV of the asked length, and its remake command names its clip (kept beside the takes,
    by its SHA-256) or its entries."""
    import hashlib

    import numpy as np

    (tmp_path / "out").mkdir()
    clip = tmp_path / "ref.wav"
    t = np.arange(44100) / 44100
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 44100)
    server = Running(pipe, tmp_path / "out", tiny_ckpt)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://localhost:{server.server.port}/")
        page.locator("summary", has_text="Like a clip").click()
        page.set_input_files("#like", str(clip))
        page.fill("#like_weight", "0.5")
        page.fill("#seconds", "0.64")
        page.fill("#steps", "3")
        page.fill("#seed", "3")
        page.get_by_role("button", name="Generate").click()
        page.locator("audio").first.wait_for(timeout=120_000)
        job = server.request("GET", "/api/jobs")[1]["jobs"][0]
        assert job["state"] == "done" and job["settings"]["like_weight"] == 0.5
        kept = tmp_path / "out" / f"{job['id']}-like.wav"
        assert kept.read_bytes() == clip.read_bytes()
        assert f"--like {kept}" in job["command"] and \
            f"--sha256 {kept}={hashlib.sha256(clip.read_bytes()).hexdigest()}" in job["command"]
        audio, rate = sf.read(io.BytesIO(page.request.get(
            f"http://localhost:{server.server.port}{page.locator('audio').first.get_attribute('src')}").body()))
        assert audio.shape == (10240,)
        assert "like a clip" in page.locator("article.job h3").first.inner_text()

        # a schedule: the clip upload cleared, entries one a line
        page.set_input_files("#like", [])
        page.fill("#schedule", "0 ambient pad\n1.5 deep house")
        page.fill("#travel", "0.5")
        page.fill("#seconds", "3")
        page.get_by_role("button", name="Generate").click()
        page.locator("audio").nth(1).wait_for(timeout=120_000)
        job = server.request("GET", "/api/jobs")[1]["jobs"][0]
        assert job["state"] == "done" and job["settings"]["schedule"] == [[0, "ambient pad"], [1.5, "deep house"]]
        assert "--at 0 'ambient pad' --at 1.5 'deep house' --travel 0.5" in job["command"]
        assert page.locator("article.job h3").first.inner_text() == "ambient pad → deep house"
        audio, rate = sf.read(io.BytesIO(page.request.get(
            f"http://localhost:{server.server.port}{page.locator('audio').first.get_attribute('src')}").body()))
        assert audio.shape == (48000,)
        # a schedule out of order is named by its field
        page.fill("#schedule", "2 deep house\n1 ambient pad")
        page.get_by_role("button", name="Generate").click()
        error = page.locator('.error[data-for="schedule"]')
        error.wait_for(state="visible", timeout=10_000)
        assert "comes before the entry before it" in error.inner_text()
    finally:
        server.close()
