"""What TensorBoard shows for a run, checked through a real TensorBoard server and a real browser
(the `slow` tier: a server start takes seconds)."""

import contextlib
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

from mnistlab.classify.pictures import FONT_PX
from mnistlab.train import train

pytestmark = pytest.mark.slow

# As TensorBoard shows them: `train` and `val` first, every other group after them (`~...`).
SCALARS = {"train/loss", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best",
           "test/loss", "test/acc", "lr-Adam", "perf/epoch_time_s", "perf/images_per_s"}  # fmt: skip
IMAGES = {"val/predictions", "test/confusion_matrix", "test/most_confident_errors"}


RUN = "run"  # the run's name in TensorBoard: its folder, served from its parent


@pytest.fixture(scope="module")
def server(tiny_run):
    # From the parent, as `make tensorboard` serves logs/: TensorBoard's HParams tab finds no
    # metric values for a run served as its own logdir (its name is ".").
    with serving(tiny_run.parent) as url:
        yield url


@contextlib.contextmanager
def serving(logdir):
    """A TensorBoard server on `logdir`, its URL while the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tensorboard = Path(sys.executable).parent / "tensorboard"
    proc = subprocess.Popen([str(tensorboard), "--logdir", str(logdir), "--host", "127.0.0.1",
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
    assert get(server, "/data/runs") == [RUN]
    scalar_tags = set(get(server, "/data/plugin/scalars/tags")[RUN])
    assert scalar_tags >= SCALARS, SCALARS - scalar_tags
    per_epoch = get(server, "/data/plugin/scalars/scalars", run=RUN, tag="val/acc")
    assert len(per_epoch) == 3  # one point per epoch
    assert (
        len(get(server, "/data/plugin/scalars/scalars", run=RUN, tag="train/loss")) == 30
    )  # 10 steps an epoch

    image_tags = set(get(server, "/data/plugin/images/tags")[RUN])
    assert image_tags >= IMAGES, image_tags
    for tag in IMAGES:
        entries = get(server, "/data/plugin/images/images", run=RUN, tag=tag)
        assert len(entries) == (3 if tag == "val/predictions" else 1)
        png = get(server, "/data/plugin/images/individualImage" + "?" + entries[-1]["query"])
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size[0] >= 300
    # A grid narrow enough to be drawn at its own size in an image card (about 345 px wide at
    # the default zoom), so its captions are as legible as the page's own text.
    entry = get(server, "/data/plugin/images/images", run=RUN, tag="val/predictions")[-1]
    grid = Image.open(
        io.BytesIO(get(server, "/data/plugin/images/individualImage?" + entry["query"]))
    )
    assert grid.size[0] <= 340 and FONT_PX >= 12

    text_tags = get(server, "/data/plugin/text/tags")[RUN]
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
        "experiment",
    } <= names

    # Every report metric holds the value of the run's results.json (float32: what an event file
    # stores), read from the run's own chart of it (no one-point hp/ copy): the HParams tab's
    # table, and the event files read directly.
    results = json.loads((tiny_run / "results.json").read_text())["metrics"]
    expected = {m: results[m] for m in compose_train().report_metrics}
    assert {"test/acc", "val/acc_best"} <= set(expected)
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= set(expected)

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


def chromium_command(window=(1920, 1080)) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        missing("no chromium: apt-get install chromium (.ci/run does)")
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={window[0]},{window[1]}", "--virtual-time-budget=30000",
            "--run-all-compositor-stages-before-draw"]  # fmt: skip


def pinned_url(server: str) -> str:
    """The address make tensorboard prints (scripts/serve_tensorboard.py), for `server`."""
    import importlib.util

    from mnistlab.lab.config import ROOT

    spec = importlib.util.spec_from_file_location("serve", ROOT / "scripts/serve_tensorboard.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    host, port = server.removeprefix("http://").split(":")
    return launcher.url(host, int(port))


def test_the_first_screen_shows_the_curves_in_headless_chromium(server, tmp_path):
    """The Time Series page at the address make tensorboard prints, as a browser shows it on a
    1400 x 1000 screen: the DOM after the page's scripts ran has the validation accuracy and
    loss pinned at the top and drawn, every tag group of the run with its card count, the
    charts named as the metrics (test/acc); no error page. The screenshot is not blank."""
    chromium = chromium_command(window=(1400, 1000))
    page = pinned_url(server)
    dom = subprocess.run([*chromium, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    text = " ".join(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", dom, flags=re.S).split())
    for error in ("ERR_", "refused", "404", "Not Found", "No dashboards are active"):
        assert error not in text, f"{error!r} on the page: {text[:500]}"
    assert "TensorBoard" in text and "Time Series" in text, text[:500]

    tags = [
        *get(server, "/data/plugin/scalars/tags")[RUN],
        *get(server, "/data/plugin/images/tags")[RUN],
    ]
    assert "test/acc" in tags and not any(t.startswith("~") for t in tags), tags
    cards = Counter(tag.split("/")[0] for tag in tags)  # one card per tag, grouped by prefix
    groups = re.findall(r'class="group-title" title="([^"]*)"', dom)
    assert set(groups) == set(cards), (groups, text[:2000])
    for group, n in cards.items():
        assert n == 1 or f"{group} {n} cards" in text, (group, n, text[:2000])
    pinned = dom[dom.index("<metrics-pinned-view") : dom.index("</metrics-pinned-view>")]
    drawn = re.findall(r'<tb-truncated-path[^>]*title="([^"]*)"', pinned)
    assert drawn[:2] == ["val/acc", "val/loss"], (drawn, text[:2000])

    shot = tmp_path / "first_screen.png"
    subprocess.run([*chromium, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1000, 1400) and pixels.std() > 10  # not a blank page
    print(f"screenshot: {shot}")


def test_a_two_experiment_sweep_is_told_apart_in_the_hparams_tab(synthetic_mnist, tmp_path):
    """`experiment=reference,two_conv`: TensorBoard's HParams tab (through its HTTP API) has an
    experiment column holding each job's experiment, beside the swept keys and the metrics."""
    from test_sweeps import sweep

    proc = sweep(synthetic_mnist, tmp_path, "experiment=reference,two_conv", "seed=7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with serving(tmp_path / "sweep") as url:
        experiment = post(url, "/data/plugin/hparams/experiment", {"experimentName": ""})
        columns = {h["name"]: h.get("differs", False) for h in experiment["hparamInfos"]}
        assert {"experiment", "seed", "lr", "net", "channels"} <= set(columns), columns
        # What differs between the jobs is marked so, and the tab shows those columns first.
        assert columns["experiment"] and columns["channels"] and not columns["seed"], columns
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        request = {"experimentName": "", "allowedStatuses": statuses, "colParams": [],
                   "startIndex": 0, "sliceSize": 100}  # fmt: skip
        groups = post(url, "/data/plugin/hparams/session_groups", request)["sessionGroups"]
    rows = {g["sessions"][0]["name"]: g for g in groups}  # a run: <job>/<what the sweep varies>
    assert sorted(rows) == ["0/experiment=reference", "1/experiment=two_conv"], rows.keys()
    assert {name: g["hparams"]["experiment"] for name, g in rows.items()} == {
        "0/experiment=reference": "reference", "1/experiment=two_conv": "two_conv"}  # fmt: skip
    assert rows["1/experiment=two_conv"]["hparams"]["channels"] == "[16, 32]"  # the experiment's
    for name, group in rows.items():
        job = tmp_path / "sweep" / name.split("/")[0]
        results = json.loads((job / "results.json").read_text())["metrics"]
        shown = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
        assert np.float32(shown["test/acc"]) == np.float32(results["test/acc"])
