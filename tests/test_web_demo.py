"""tools/web_demo.py: the Gradio page answers a real gradio_client with the Predictor's masks.

Starts the demo on 127.0.0.1 in a subprocess (a nano LAVT with random weights), uploads a small
image with two expressions and compares the downloaded mask PNGs with `Predictor.predict` on the
same file. The server test needs the optional packages gradio and gradio_client
(requirements-demo.txt, not installed by make setup) and is skipped, naming the missing one, without them.
"""
import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bert import load_tokenizer
from errors import UserInputError
from lib.checkpoint import save_checkpoint
from lib.predictor import Predictor
from lib.referring_model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPRESSIONS = ["the red block on the left", "the big square"]
STARTUP_SECONDS = 240  # importing gradio and torch on a busy 2-core machine takes most of this


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


def write_blocks_image(path):
    """Two-colour blocks, 37 x 53: not square, not the model's input size."""
    rows, cols = np.mgrid[:37, :53]
    blocks = ((rows // 9 + cols // 7) % 2)[..., None] == 1
    Image.fromarray(np.where(blocks, [230, 40, 40], [30, 30, 200]).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    """A random nano LAVT whose class-1 bias is shifted so the test image's masks are about half
    foreground: an all-empty mask would match a wrongly placed or transposed one."""
    root = tmp_path_factory.mktemp("web_demo")
    torch.manual_seed(0)
    options = argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights="",
                                 window_size=4, img_size=64)
    model = build_model(options)
    predictions = Predictor(model, load_tokenizer("minilm"), 64).predict(write_blocks_image(str(root / "calib.png")),
                                                                         EXPRESSIONS)
    probability = np.concatenate([p.probability.ravel() for p in predictions]).astype(np.float64).clip(1e-12, 1 - 1e-12)
    with torch.no_grad():
        model.model.classifier.conv1_1.bias[1] -= float(np.median(np.log(probability / (1 - probability))))
    path = str(root / "nano.pth")
    save_checkpoint(path, model=model.model, bert_model=model.bert_model, args=options)
    return path


def test_missing_gradio_is_named(monkeypatch):
    tool = web_demo_tool()
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(UserInputError, match="optional package 'gradio'.*requirements-demo.txt"):
        tool.require_gradio()


def test_client_gets_the_predictor_masks(nano_checkpoint, tmp_path):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the optional package 'gradio' is not installed (pip install -r requirements-demo.txt)")
    client_module = pytest.importorskip(
        "gradio_client", reason="the optional package 'gradio_client' is not installed (pip install -r requirements-demo.txt)")
    image_path, expressions = write_blocks_image(str(tmp_path / "odd size.png")), EXPRESSIONS

    port, log_path = free_port(), tmp_path / "server.log"
    command = [sys.executable, os.path.join(REPO, "tools", "web_demo.py"), "--resume", nano_checkpoint,
               "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        wait_until_listening(process, port, log_path)
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False,
                                      download_files=str(tmp_path / "downloads"))
        overlays, masks, files, summary = client.predict(client_module.handle_file(image_path),
                                                         "\n".join(expressions) + "\n\n", api_name="/segment")
        with pytest.raises(Exception, match="at least one expression"):
            client.predict(client_module.handle_file(image_path), "  \n", api_name="/segment")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

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
