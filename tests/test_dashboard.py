"""What TensorBoard shows for a run, checked through a real TensorBoard server and a real browser
(the `slow` tier: a server start takes seconds)."""

import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab.train import train

pytestmark = pytest.mark.slow

SCALARS = {"train/loss", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best",
           "test/loss", "test/acc", "lr-Adam", "perf/epoch_time_s", "perf/images_per_s",
           "hp/test_acc", "hp/val_acc_best"}  # fmt: skip
IMAGES = {"val/predictions", "test/confusion_matrix", "test/most_confident_errors"}


@pytest.fixture(scope="module")
def server(tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tensorboard = Path(sys.executable).parent / "tensorboard"
    proc = subprocess.Popen([str(tensorboard), "--logdir", str(tiny_run), "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get(url, "/data/runs"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "TensorBoard did not start"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def tiny_run(synthetic_mnist, tmp_path_factory):
    from conftest import compose_train
    from omegaconf import open_dict

    run = tmp_path_factory.mktemp("dash") / "run"
    cfg = compose_train([f"paths.data_dir={synthetic_mnist.root}", f"paths.output_dir={run}",
                         "data.sources=[local]", "data.val_size=100", "trainer=cpu",
                         "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                         "data.batch_size=50", "trainer.limit_val_batches=null"])  # fmt: skip
    with open_dict(cfg):
        cfg.data.checksums = synthetic_mnist.checksums
    train(cfg)
    return run


def get(url: str, path: str, **params):
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=30) as response:
        body = response.read()
    return body if response.headers.get_content_type().startswith("image/") else json.loads(body)


def test_tensorboard_lists_the_run_its_scalars_images_and_text(server):
    assert get(server, "/data/runs") == ["."]
    scalar_tags = set(get(server, "/data/plugin/scalars/tags")["."])
    assert scalar_tags >= SCALARS, SCALARS - scalar_tags
    per_epoch = get(server, "/data/plugin/scalars/scalars", run=".", tag="val/acc")
    assert len(per_epoch) == 3  # one point per epoch
    assert (
        len(get(server, "/data/plugin/scalars/scalars", run=".", tag="train/loss")) == 30
    )  # 10 steps an epoch

    image_tags = set(get(server, "/data/plugin/images/tags")["."])
    assert image_tags >= IMAGES, image_tags
    for tag in IMAGES:
        entries = get(server, "/data/plugin/images/images", run=".", tag=tag)
        assert len(entries) == (3 if tag == "val/predictions" else 1)
        png = get(server, "/data/plugin/images/individualImage" + "?" + entries[-1]["query"])
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size[0] >= 300

    text_tags = get(server, "/data/plugin/text/tags")["."]
    assert {"run/config/text_summary", "run/git/text_summary"} <= set(text_tags)


def test_hparams_tab_has_the_hyperparameters_and_real_metric_values(server):
    request = urllib.request.Request(
        f"{server}/data/plugin/hparams/experiment",
        data=json.dumps({"experimentName": ""}).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        experiment = json.loads(response.read())
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {
        "lr",
        "batch_size",
        "net",
        "channels",
        "hidden",
        "max_epochs",
        "precision",
        "seed",
    } <= names
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"hp/test_acc", "hp/val_acc_best"} <= metrics


def test_the_scalars_page_renders_in_headless_chromium(server, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium: apt-get install chromium (.ci/run does)")
    shot = tmp_path / "scalars.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,900", "--virtual-time-budget=15000",
                    f"--screenshot={shot}", f"{server}/#timeseries"],
                   capture_output=True, timeout=120)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1400) and pixels.std() > 10  # not a blank page
    print(f"screenshot: {shot}")
