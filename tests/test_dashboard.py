"""What TensorBoard shows for a run, checked through a real TensorBoard server and a real browser
(the `slow` tier: a server start takes seconds)."""

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_train, missing
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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


def post(url: str, path: str, body: dict):
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_hparams_tab_has_the_hyperparameters_and_real_metric_values(server, tiny_run):
    experiment = post(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
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

    # Every report metric, as hp/<name>, holds the value of the run's results.json (float32: what
    # an event file stores): the HParams tab's table, and the event files read directly.
    results = json.loads((tiny_run / "results.json").read_text())["metrics"]
    expected = {f"hp/{m.replace('/', '_')}": results[m] for m in compose_train().report_metrics}
    assert {"hp/test_acc", "hp/val_acc_best"} <= set(expected)
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == set(expected)

    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    request = {"experimentName": "", "allowedStatuses": statuses, "colParams": [],
               "startIndex": 0, "sliceSize": 100}  # fmt: skip
    (group,) = post(server, "/data/plugin/hparams/session_groups", request)["sessionGroups"]
    in_tab = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
    events = EventAccumulator(str(tiny_run)).Reload()
    in_files = {tag: events.Scalars(tag)[-1].value for tag in expected}
    for tag, value in expected.items():
        assert np.float32(in_tab[tag]) == np.float32(value), (tag, in_tab[tag], value)
        assert np.float32(in_files[tag]) == np.float32(value), (tag, in_files[tag], value)


def test_the_scalars_page_renders_in_headless_chromium(server, tmp_path):
    """The Time Series page (TensorBoard's scalars) as a browser shows it: the DOM after the page's
    scripts ran has this run's tag groups with their card counts and the hp/ cards drawn first,
    and no error page; the screenshot is not blank."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        missing("no chromium: apt-get install chromium (.ci/run does)")
    page = f"{server}/#timeseries"
    chromium = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1400,900", "--virtual-time-budget=15000"]  # fmt: skip
    dom = subprocess.run([*chromium, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    text = " ".join(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", dom, flags=re.S).split())
    for error in ("ERR_", "refused", "404", "Not Found", "No dashboards are active"):
        assert error not in text, f"{error!r} on the page: {text[:500]}"
    assert "TensorBoard" in text and "Time Series" in text, text[:500]

    tags = [
        *get(server, "/data/plugin/scalars/tags")["."],
        *get(server, "/data/plugin/images/tags")["."],
    ]
    cards = Counter(tag.split("/")[0] for tag in tags)  # one card per tag, grouped by prefix
    assert set(re.findall(r'class="group-title" title="([^"]*)"', dom)) == set(cards), text[:2000]
    for group, n in cards.items():
        assert n == 1 or f"{group} {n} cards" in text, (group, n, text[:2000])
    shown = set(re.findall(r'<tb-truncated-path[^>]*title="([^"]*)"', dom))  # the drawn cards
    assert {"hp/test_acc", "hp/val_acc_best"} <= shown <= set(tags), shown

    shot = tmp_path / "scalars.png"
    subprocess.run([*chromium, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1400) and pixels.std() > 10  # not a blank page
    print(f"screenshot: {shot}")
