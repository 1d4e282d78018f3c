"""tools/web_demo.py: the Gradio page gives the Predictor's masks to a gradio_client and to a browser.

Starts the demo on 127.0.0.1 in a subprocess (a nano LAVT with random weights, served from a
model-only fp16 file of tools/export_weights.py), uploads a small image with two expressions and
compares the downloaded mask PNGs, and the overlays a headless Chromium shows, with
`Predictor.predict` on the same file. gradio and gradio_client come with make setup
(requirements-demo.txt); the browser test needs Debian's chromium and chromium-driver and the
PyPI package selenium (.ci/run installs them) and is skipped, naming what is missing, without them.
"""
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from demo_inference import overlay
from errors import UserInputError
from lib.checkpoint_io import atomic_torch_save, load_checkpoint_file, save_checkpoint
from lib.predictor import Predictor, open_image
from lib.weights import model_only_weights
from tests.nano_models import EXPRESSIONS, half_foreground_nano, write_blocks_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_SECONDS = 240  # importing gradio and torch on a busy 2-core machine takes most of this
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Without the networking flags, Chromium's background connections are refused on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1600")
PAGE_SECONDS = 120


def web_demo_tool():
    spec = importlib.util.spec_from_file_location("web_demo", os.path.join(REPO, "tools", "web_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(process, port, log_path):
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the web demo exited with {process.returncode}:\n{open(log_path).read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the web demo did not listen on port {port} within {STARTUP_SECONDS} s:\n{open(log_path).read()}")


@pytest.fixture(scope="module")
def nano_checkpoint(module_tmp):
    """A model-only fp16 file (what one deploys), MiniLM referenced by name."""
    root = module_tmp("web_demo")
    model, options = half_foreground_nano(write_blocks_image(str(root / "calib.png")))
    save_checkpoint(root / "nano.pth", model=model.model, bert_model=model.bert_model, args=options)
    weights, _ = model_only_weights(load_checkpoint_file(root / "nano.pth"), "fp16")
    path = str(root / "nano_fp16.pth")
    atomic_torch_save(weights, path)
    return path


@pytest.fixture(scope="module")
def demo_url(nano_checkpoint, module_tmp):
    """The demo's address, served from a subprocess for the tests of this module."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the optional package 'gradio' is not installed (pip install -r requirements-demo.txt)")
    port, log_path = free_port(), module_tmp("server") / "server.log"
    command = [sys.executable, os.path.join(REPO, "tools", "web_demo.py"), "--resume", nano_checkpoint,
               "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        wait_until_listening(process, port, log_path)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_missing_gradio_is_named(monkeypatch):
    tool = web_demo_tool()
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(UserInputError, match="optional package 'gradio'.*requirements-demo.txt"):
        tool.require_gradio()


@pytest.mark.slow
def test_client_gets_the_predictor_masks(nano_checkpoint, demo_url, tmp_path):
    client_module = pytest.importorskip(
        "gradio_client", reason="the optional package 'gradio_client' is not installed (pip install -r requirements-demo.txt)")
    image_path, expressions = write_blocks_image(str(tmp_path / "odd size.png")), EXPRESSIONS
    client = client_module.Client(demo_url, verbose=False, analytics_enabled=False,
                                  download_files=str(tmp_path / "downloads"))
    overlays, masks, files, summary = client.predict(client_module.handle_file(image_path),
                                                     "\n".join(expressions) + "\n\n", api_name="/segment")
    with pytest.raises(Exception, match="at least one expression"):
        client.predict(client_module.handle_file(image_path), "  \n", api_name="/segment")

    expected = Predictor.from_checkpoint(nano_checkpoint, device="cpu").predict(image_path, expressions)
    assert [item["caption"] for item in overlays] == expressions
    assert [item["caption"] for item in masks] == expressions
    assert [os.path.basename(path) for path in files] == ["odd size_0_mask.png", "odd size_1_mask.png"]
    for path, prediction in zip(files, expected):
        assert 0 < prediction.mask.mean() < 1  # both values present, so placement is checked
        mask = np.asarray(Image.open(path))
        assert mask.shape == (37, 53)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, prediction.mask)
    for item in overlays:
        assert Image.open(item["image"]).size == (53, 37)
    assert all(expression in summary for expression in expressions)


def chromium_driver(profile_dir):
    """A headless Debian Chromium under selenium, or a skip naming what is missing."""
    missing = [f"{path} (apt-get install {package})" for path, package in
               ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")) if not shutil.which(path)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the Python package selenium (pip install -r requirements-dev.txt)")
    if missing:
        pytest.skip("the browser test needs " + " and ".join(missing))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    # The system driver, so that selenium does not try to download one.
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def gallery_images(driver, label):
    """The <img> elements of the gallery labelled `label`."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.XPATH, f"//div[contains(@class, 'block')][.//*[normalize-space(text())='{label}']]"
                                          "//img")


@pytest.mark.slow
def test_browser_uploads_types_clicks_and_sees_the_overlays(nano_checkpoint, demo_url, tmp_path):
    image_path = write_blocks_image(str(tmp_path / "blocks.png"))
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        driver = chromium_driver(profile)
        try:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            driver.get(demo_url)
            wait = WebDriverWait(driver, PAGE_SECONDS)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
            driver.find_elements(By.CSS_SELECTOR, "input[type=file]")[0].send_keys(image_path)
            # The upload finishes when the preview of the image replaces the drop zone.
            wait.until(lambda d: gallery_images(d, "Image") or d.find_elements(By.CSS_SELECTOR, "img[alt='']"))
            text = driver.find_element(By.XPATH, "//label[.//*[contains(text(), 'Expressions')]]//textarea")
            text.send_keys("\n".join(EXPRESSIONS))
            driver.find_element(By.XPATH, "//button[normalize-space(.)='Segment']").click()
            wait.until(lambda d: len(gallery_images(d, "Overlays")) >= len(EXPRESSIONS))
            driver.save_screenshot(str(tmp_path / "page.png"))
            sources = [img.get_attribute("src") for img in gallery_images(driver, "Overlays")]
            page = driver.page_source
        finally:
            driver.quit()

    assert all(expression in page for expression in EXPRESSIONS)  # the captions
    expected = Predictor.from_checkpoint(nano_checkpoint, device="cpu").predict(image_path, EXPRESSIONS)
    shown = []
    for source in dict.fromkeys(sources):  # a gallery may show a thumbnail and a preview of one image
        with urllib.request.urlopen(source, timeout=30) as response:
            shown.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")))
    image = open_image(image_path)
    for prediction in expected:
        assert 0 < prediction.mask.mean() < 1
        drawn = np.asarray(overlay(image, prediction.mask).convert("RGB"))
        assert any(candidate.shape == drawn.shape and np.array_equal(candidate, drawn) for candidate in shown), \
            f"no overlay on the page matches the Predictor's mask for {prediction.expression!r}"
