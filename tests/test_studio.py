"""aa-studio through its HTTP API (gradio_client) on 127.0.0.1, on a tiny random bundle: learn a person (2 + 1
steps) → the identity is in the library → direct it → an mp4 of the asked frames and size comes back; bad input is
one readable line."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from aa_runtime.video import read_video  # noqa: E402
from aa_world.clips import ClipSpec, render_clip, write_clip  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tiny_bundle, tmp_path_factory):
    from aa_studio.app import StudioConfig, launch

    root = tmp_path_factory.mktemp("studio")
    cfg = StudioConfig(base=str(tiny_bundle), library=root / "library", work=root / "work", max_seconds=30)
    port = free_port()
    app = launch(cfg, host="127.0.0.1", port=port, block=False)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), cfg, root
    finally:
        app.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.mp4"  # with its sidecar: poses and masks without MediaPipe
    write_clip(render_clip(ClipSpec(identity_seed=5, scene="beach", scene_seed=1, motion="turn", objects=(),
                                    frames=8, fps=8.0, width=64, height=64, seed=2)), path)
    return path


def test_learn_then_direct_through_the_api(studio, reference):
    client, cfg, _ = studio
    # an upload arrives without its sidecar: MediaPipe finds the person, and nothing writes the appearance yet
    preview, appearance, _ = client.predict(handle_file(str(reference)), False, "ann", "woman", api_name="/prepare")
    assert Path(preview).is_file() and appearance == ""
    status, _, adapter, _ = client.predict(handle_file(str(reference)), False, "ann", "woman",
                                           "in a red shirt and blue trousers", 2, 1, False, api_name="/learn")
    assert "done" in status and Path(adapter).name == "ann.safetensors"
    assert (cfg.library / "ann.safetensors").is_file()
    table = client.predict(api_name="/identities")
    assert [row[0] for row in table["data"]] == ["ann"]
    assert (cfg.library / "ann.annotations.png").is_file()  # the thumbnail the Identities tab shows
    video, preview_video, sidecar = client.predict("ann", "a <ann> woman dancing in a snow field", "dance", None,
                                                   2, 5.0, 3, 4, "", api_name="/direct")
    clip = read_video(video["video"] if isinstance(video, dict) else video)
    assert clip.frames.shape == (4, 64, 64, 3)
    assert sidecar["adapter"].endswith("ann.safetensors") and sidecar["frames"] == 4 and sidecar["seed"] == 3
    assert "red shirt" in sidecar["prompt_used"]  # the appearance written at training goes into the prompt
    # the base is loaded once and the identity undone after the run: the same seed without it differs
    plain = client.predict("", "a woman dancing in a snow field", "dance", None, 2, 5.0, 3, 4, "",
                           api_name="/direct")[2]
    assert plain["adapter"] is None and plain["base_fingerprint"] == sidecar["base_fingerprint"]
    table, _, gallery = client.predict("ann", api_name="/delete")
    assert table["data"] in ([], [[]]) or not any(row and row[0] == "ann" for row in table["data"])
    assert not any(cfg.library.iterdir()) and gallery == []


def test_bad_uploads_and_names_are_one_line_errors(studio, tmp_path):
    from gradio_client.exceptions import AppError

    client, cfg, _ = studio
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video")
    with pytest.raises(AppError) as e:
        client.predict(handle_file(str(fake)), False, "me", "man", api_name="/prepare")
    assert "is not a readable video" in str(e.value) and "\n" not in str(e.value).strip()
    with pytest.raises(AppError, match="use 1–40 letters"):
        client.predict(handle_file(str(fake)), True, "../../etc", "man", api_name="/prepare")
    with pytest.raises(AppError, match="not in the list of choices"):  # the page's own dropdown check comes first
        client.predict("../secret", "a man", "dance", None, 2, 5.0, 0, 2, "", api_name="/direct")
    with pytest.raises(AppError, match="pick one from the Identities list"):  # behind it, the library's
        client.predict("../../etc/passwd", api_name="/download")
    assert not any(cfg.library.glob("*.tmp*"))


def chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)


def test_direct_in_a_real_browser(studio, tmp_path):
    """Debian's Chromium driven by Playwright: the Direct tab with a built-in motion and 2 steps gives a video
    element whose source serves an mp4 of the asked frame count; the page's screenshot is not blank."""
    from urllib.request import urlopen

    import numpy as np
    from PIL import Image

    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found: apt-get install chromium (CI's .ci/run installs it)")
    url = studio[0].src
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Direct").click()
            for elem, value in (("steps", "2"), ("frames", "4")):
                box = page.locator(f"#{elem} input[type=number]")
                box.fill(value)
                box.press("Enter")
            page.locator("#generate").click()
            video = page.locator("#result-video video")
            video.wait_for(state="attached", timeout=120_000)
            page.wait_for_function("() => { const v = document.querySelector('#result-video video');"
                                   " return v && v.src && v.src.length > 0; }", timeout=120_000)
            src = video.get_attribute("src")
            shot = tmp_path / "direct.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with urlopen(src if src.startswith("http") else url.rstrip("/") + src, timeout=30) as response:
        assert response.status == 200
        mp4 = tmp_path / "result.mp4"
        mp4.write_bytes(response.read())
    assert read_video(mp4).frames.shape[0] == 4
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 5  # a drawn page, not a blank one
