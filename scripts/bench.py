"""Benchmark the template's training path against plain PyTorch on this machine.

    python scripts/bench.py [--epochs 2] [--repeats 3] [--batch-size 64] [--quick] [--json F]
                            [--threads N] [--profile] [--no-origin] [--no-folder] [--no-fixed]

Each loop runs in a fresh process, the loops alternating within every repetition:
  template  `python -m mnistlab.train` with the default config as a user runs it (logging and
            checkpointing on, progress bar off), timed by a callback added on the command line;
  plain     a plain eager PyTorch loop over the same in-memory uint8 tensors, same split, model,
            batch, optimizer (default Adam) and seed: the reference;
  plain_same  the same loop with the template's kernels: fused Adam and the channels-last layout
            (`model.optimizer.fused`, `model.channels_last`), so that template / plain_same is
            the cost of the machinery alone; per step, in microseconds, "per-step overhead";
  lightning  plain_same's step as a minimal LightningModule under a bare Trainer (no logger,
            callbacks or checkpoints, but the template's fix for Lightning's per-step CUDA query,
            `lean.NoCudaProbe`): splits that overhead into Lightning's loop and the template;
  origin    the origin document's loop: torchvision MNIST, PIL ToTensor + Normalize, DataLoader
            with 0 workers, training on all 60k images;
  bound     the compute-bound estimate: FLOPs per epoch over a matmul probe's FLOP/s.
The fixed cost (--no-fixed skips it): template, plain_same and lightning again, one epoch on one
thread, with a network whose kernels take almost no time (Flatten -> Linear(784, 8) -> ReLU ->
Linear(8, 10)); their median step times differ by the machinery's cost per step alone.
And, on the same 70k images written as PNG files into an image folder (logs/bench/mnist_png/,
made once; --no-folder skips this part):
  folder    the template with data=image_folder at 1x28x28 (the cache built before timing);
  tvfolder  torchvision's ImageFolder + DataLoader(num_workers=2) with the usual transforms
            (Grayscale, Resize, ToTensor, Normalize), the same network and optimizer;
  start-up  a fresh process's data setup on the folder: decoding into the cache, then with it.
Epoch time covers training plus the validation pass where the loop has one (template, plain,
folder). `--threads N` runs every loop with N torch threads (a sweep's joblib jobs run with one);
`--profile` adds one template run under Lightning's SimpleProfiler and prints its costliest
actions per training step. Ratios to origin and tvfolder use seconds per training image: they train on 60k images.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_VAL, SPLIT_SEED, SEED = 5000, 42, 12345
# Forward FLOPs per image of the reference CNN: conv 28*28*16*9*2, Linear(3136,128), Linear(128,10).
FWD_FLOP = 28 * 28 * 16 * 9 * 2 + 3136 * 128 * 2 + 128 * 10 * 2
# Backward: twice the forward for the linears (input and weight grads); the first conv needs only
# its weight gradient. Gives 2.87 MFLOP per image for forward + backward.
TRAIN_FLOP = FWD_FLOP + 2 * (3136 * 128 * 2 + 128 * 10 * 2) + 28 * 28 * 16 * 9 * 2


def rss_mb() -> float:
    """Resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Recorder:
    """Collects a child's figures and writes them as JSON to $BENCH_OUT."""

    def __init__(self):
        self.t0 = float(os.environ["BENCH_T0"])
        self.result = {"epoch_s": [], "rss_after_epoch_mb": [], "step_us": []}
        self._epoch_start = 0.0
        self._last_step: float | None = None
        self._epoch_steps = 0

    def step_end(self):
        """After every optimizer step: the first one's time since process start, and each
        step's duration from the end of the one before (all that runs between two steps)."""
        now = time.perf_counter()
        self.result.setdefault("first_step_s", time.time() - self.t0)
        self._epoch_steps += 1
        if self._last_step is not None and self._epoch_steps > 10:  # warm kernels and caches
            self.result["step_us"].append((now - self._last_step) * 1e6)
        self._last_step = now

    def epoch_start(self):
        self._epoch_start = time.perf_counter()
        self._last_step, self._epoch_steps = None, 0

    def epoch_end(self):
        self.result["epoch_s"].append(time.perf_counter() - self._epoch_start)
        self.result["rss_after_epoch_mb"].append(rss_mb())

    def write(self, test_acc: float, n_train: int):
        steps = self.result.pop("step_us")
        self.result |= {"test_acc": test_acc, "n_train": n_train, "peak_rss_mb": peak_rss_mb(),
                        "step_median_us": statistics.median(steps) if steps else None}  # fmt: skip
        Path(os.environ["BENCH_OUT"]).write_text(json.dumps(self.result))


# ------------------------------------------------------------------------------ template


FOLDER_ARGS = ["data=image_folder", "data.channels=1", "data.image_size=28", f"data.val_size={N_VAL}",
               "data.mean=[0.5]", "data.std=[0.5]"]  # fmt: skip


# The per-batch augmentation of experiment=robust (DigitAugment's defaults; the cost is the same
# whatever its ranges), on the template's own network.
AUGMENT_ARGS = ["data.batch_augment={_target_:mnistlab.data.augment.DigitAugment}"]


def template_argv(args, run_dir: str, folder: bool = False, profile: bool = False,
                  augment: bool = False) -> list[str]:  # fmt: skip
    extra = [*FOLDER_ARGS, f"data.root={args.folder}"] if folder else []
    extra += TINY_ARGS if args.tiny else []
    extra += AUGMENT_ARGS if augment else []
    if profile:
        extra += ["+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
                  f"+trainer.profiler.dirpath={run_dir}"]  # fmt: skip
    return [
        sys.executable, "-m", "mnistlab.train", *extra,
        f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}",
        f"paths.data_dir={args.data_dir}", f"hydra.run.dir={run_dir}",
        "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "+callbacks.bench_timer._target_=bench_timer.BenchTimer",
    ]  # fmt: skip


# The fixed cost part: a network whose kernels take almost no time (Flatten -> Linear(784, 8) ->
# ReLU -> Linear(8, 10)), so that a step is the machinery around it, on one thread.
TINY_NET = {"channels": (), "hidden": 8}
TINY_ARGS = ["model.net.channels=[]", "model.net.hidden=8"]


def net_args(args) -> dict:
    return TINY_NET if args.tiny else {}


# ------------------------------------------------------------------------------ plain, origin


def mnist_tensors(args):
    """uint8 images (N, 1, 28, 28) and labels: train and val (the template's split), test."""
    import torch

    from mnistlab.data.idx import read_idx

    raw = Path(args.data_dir) / "MNIST" / "raw"

    def read(stem):
        images = torch.from_numpy(read_idx(raw / f"{stem}-images-idx3-ubyte").copy()).unsqueeze(1)
        return images, torch.from_numpy(read_idx(raw / f"{stem}-labels-idx1-ubyte").copy()).long()

    (images, labels), (test_x, test_y) = read("train"), read("t10k")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:N_VAL], order[N_VAL:]
    return images[train], labels[train], images[val], labels[val], test_x, test_y


def prep(x, layout):
    """ToTensor + Normalize((0.5,), (0.5,)) on a uint8 batch, in the given memory layout."""
    return x.float().div(255).sub(0.5).div(0.5).contiguous(memory_format=layout)


def run_plain(args, same_kernels: bool = False):
    import torch
    from torch import nn

    from mnistlab.nets import ConvNet

    rec = Recorder()
    torch.manual_seed(SEED)
    train_x, train_y, val_x, val_y, test_x, test_y = mnist_tensors(args)
    layout = torch.channels_last if same_kernels else torch.contiguous_format

    def accuracy(net, xs, ys):
        net.eval()
        with torch.no_grad():
            correct = sum(
                (net(prep(xs[i : i + 1000], layout)).argmax(1) == ys[i : i + 1000]).sum().item()
                for i in range(0, len(ys), 1000)
            )
        net.train()
        return correct / len(ys)

    net = ConvNet(**net_args(args)).to(memory_format=layout)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=same_kernels or None)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        rec.epoch_start()
        perm = torch.randperm(len(train_y))
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = loss_fn(net(prep(train_x[idx], layout)), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step_end()
        accuracy(net, val_x, val_y)
        rec.epoch_end()
    rec.write(accuracy(net, test_x, test_y), len(train_y))


def run_lightning(args):
    """Lightning's own floor: plain_same's step (same network, fused Adam, channels-last, the same
    batches gathered the same way) as a minimal LightningModule, run by a Trainer with no logger,
    callback, checkpoint, progress bar or summary. lightning - plain_same is Lightning's loop;
    template - lightning is what the template adds to it."""
    import lightning as L
    import torch
    from torch import nn

    from mnistlab.lab.lean import NoCudaProbe
    from mnistlab.nets import ConvNet

    rec = Recorder()
    torch.manual_seed(SEED)
    train_x, train_y, val_x, val_y, test_x, test_y = mnist_tensors(args)
    layout = torch.channels_last

    class Batches:
        def __init__(self, x, y, size, shuffle):
            self.x, self.y, self.size, self.shuffle = x, y, size, shuffle

        def __len__(self):
            return -(-len(self.y) // self.size)

        def __iter__(self):
            n = len(self.y)
            order = torch.randperm(n) if self.shuffle else torch.arange(n)
            for i in range(0, n, self.size):
                idx = order[i : i + self.size]
                yield self.x[idx], self.y[idx]

    class Minimal(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ConvNet(**net_args(args)).to(memory_format=layout)
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, batch_idx):
            return self.loss_fn(self.net(prep(batch[0], layout)), batch[1])

        def validation_step(self, batch, batch_idx):
            (self.net(prep(batch[0], layout)).argmax(1) == batch[1]).sum()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

        def on_train_batch_end(self, *args):
            rec.step_end()

        def on_train_epoch_start(self):
            rec.epoch_start()

        def on_train_epoch_end(self):
            rec.epoch_end()

    model = Minimal()
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[NoCudaProbe()])  # fmt: skip
    trainer.fit(model, Batches(train_x, train_y, args.batch_size, True),
                Batches(val_x, val_y, 1000, False))  # fmt: skip
    with torch.no_grad():
        correct = sum((model.net(prep(x, layout)).argmax(1) == y).sum().item()
                      for x, y in Batches(test_x, test_y, 1000, False))  # fmt: skip
    rec.write(correct / len(test_y), len(train_y))


def run_origin(args):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    rec = Recorder()
    torch.manual_seed(SEED)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_set = datasets.MNIST(args.data_dir, train=True, transform=transform)
    test_set = datasets.MNIST(args.data_dir, train=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    net = train_epochs(rec, train_loader, args.epochs)
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=1000):
            correct += (net(x).argmax(1) == y).sum().item()
    rec.write(correct / len(test_set), len(train_set))


def run_tvfolder(args):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    rec = Recorder()
    torch.manual_seed(SEED)
    transform = transforms.Compose([transforms.Grayscale(1), transforms.Resize((28, 28)),
                                    transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])  # fmt: skip
    train_set = datasets.ImageFolder(str(Path(args.folder) / "train"), transform=transform)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=2,
                        persistent_workers=True)  # fmt: skip
    train_epochs(rec, loader, args.epochs)
    rec.write(float("nan"), len(train_set))


def train_epochs(rec: Recorder, loader, epochs: int):
    """The reference network trained with a DataLoader of normalized batches, as in the origin
    document: CrossEntropyLoss, Adam lr 1e-3."""
    import torch
    from torch import nn

    from mnistlab.nets import ConvNet

    net, loss_fn = ConvNet(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        rec.epoch_start()
        for x, y in loader:
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step_end()
        rec.epoch_end()
    return net


def run_startup(args):
    """A fresh process's data setup on the folder (decoding into the cache when there is none)."""
    start = time.perf_counter()
    from mnistlab.data.image_folder import ImageFolderDataModule

    imported = time.perf_counter()
    dm = ImageFolderDataModule(args.folder, [str(d) for d in range(10)], image_size=28,
                               channels=1, val_size=N_VAL)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    done = time.perf_counter()
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(
        {"import_s": imported - start, "setup_s": done - imported, "n": len(dm.train_set)}))  # fmt: skip


def write_png_folder(data_dir: str, folder: Path) -> None:
    """MNIST's 60k + 10k images as PNG files, root/{train,test}/<digit>/<index>.png (once)."""
    if (folder / "complete").is_file():
        return
    import numpy as np
    from PIL import Image

    from mnistlab.data.idx import read_idx

    print(f"writing MNIST as 70,000 PNG files into {folder} (once) ...", flush=True)
    raw = Path(data_dir) / "MNIST" / "raw"
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = (
            read_idx(raw / f"{stem}-{k}") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
        for digit in range(10):
            (folder / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(np.asarray(image)).save(folder / split / str(label) / f"{i:05d}.png")
    (folder / "complete").touch()


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


# ------------------------------------------------------------------------------ parent


def launch(loop: str, args) -> dict:
    if loop.startswith("tiny_"):  # the fixed cost: tiny network, one thread, one epoch
        loop, args = (
            loop.removeprefix("tiny_"),
            argparse.Namespace(**{**vars(args), "tiny": True, "threads": 1, "epochs": 1}),
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "result.json")
        # This checkout's code and its bench timer, whatever the environment has installed.
        path = os.pathsep.join(str(ROOT / d) for d in ("src", "scripts"))
        env = {**os.environ, "BENCH_OUT": str(out), "PYTHONPATH": path}
        if args.threads:  # torch reads it when imported, in every loop alike
            env["OMP_NUM_THREADS"] = str(args.threads)
        if loop in ("template", "folder", "profile", "augment"):
            argv = template_argv(args, str(Path(tmp, "run")), loop == "folder", loop == "profile",
                                 loop == "augment")  # fmt: skip
        else:
            argv = [sys.executable, __file__, "--child", loop, *child_flags(args)]
        env["BENCH_T0"] = repr(time.time())
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            sys.exit(f"{loop} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def child_flags(args) -> list[str]:
    return [
        f"--epochs={args.epochs}",
        f"--batch-size={args.batch_size}",
        f"--data-dir={args.data_dir}",
        f"--folder={args.folder}",
        *(["--tiny"] if args.tiny else []),
    ]


def folder_start_ups(args) -> list[dict]:
    """The data setup on the PNG folder in fresh processes: without a cache, then with it."""
    import shutil

    write_png_folder(args.data_dir, Path(args.folder))
    shutil.rmtree(Path(args.folder) / ".cache", ignore_errors=True)
    print("image folder: data setup without the cache, then with it ...", flush=True)
    return [launch("startup", args) for _ in range(3)]


def time_command(argv: list[str], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summarize(runs: dict[str, list[dict]], flops: float, args) -> dict:
    summary = {}
    for loop, results in runs.items():
        if loop == "startup":
            continue
        epoch_s = statistics.median(s for r in results for s in r["epoch_s"])
        n_train = results[0]["n_train"]
        rss_growth = [r["rss_after_epoch_mb"][-1] - r["rss_after_epoch_mb"][0] for r in results]
        summary[loop] = {
            "n_train": n_train,
            "epoch_s": epoch_s,
            "images_per_s": n_train / epoch_s,
            "s_per_image": epoch_s / n_train,
            "first_step_s": statistics.median(r["first_step_s"] for r in results),
            "step_median_us": statistics.median(r["step_median_us"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "rss_growth_mb": max(rss_growth),
            "test_acc": statistics.median(r["test_acc"] for r in results)
            if loop != "tvfolder"
            else None,
        }
    n_train = runs["template"][0]["n_train"]
    bound_s = (n_train * TRAIN_FLOP + N_VAL * FWD_FLOP) / flops
    summary["bound"] = {
        "epoch_s": bound_s,
        "images_per_s": n_train / bound_s,
        "gflops": flops / 1e9,
    }
    return summary


def report_profile(result: dict, args, top: int = 15) -> dict:
    """The profiled run's costliest actions, per training step (nested actions overlap: a
    batch's time holds its step's, the step's holds the hooks')."""
    steps = args.epochs * -(-result["n_train"] // args.batch_size)
    costs = {k: total / steps * 1e6 for k, (total, _) in result["profile"].items()}
    print(f"\nSimpleProfiler, one template run: microseconds per training step ({steps} steps)")
    for action, us in sorted(costs.items(), key=lambda kv: -kv[1])[:top]:
        calls = result["profile"][action][1]
        print(f"{us:9.0f}  {action[:90]}  ({calls} calls)")
    return costs


def report(summary: dict, startup: dict, args) -> None:
    threads = args.threads or f"torch's default on {os.cpu_count()} cores"
    print(f"\nepochs={args.epochs} repeats={args.repeats} batch={args.batch_size} "
          f"threads={threads}")  # fmt: skip
    print(f"{'loop':10}{'epoch s':>9}{'img/s':>8}{'1st step s':>11}{'peak RSS MB':>12}"
          f"{'RSS growth':>11}{'test acc':>9}")  # fmt: skip
    for loop, s in summary.items():
        if loop == "folder_startup" or loop.startswith("tiny_"):
            continue
        if loop == "bound":
            print(f"{loop:10}{s['epoch_s']:9.2f}{s['images_per_s']:8.0f}   "
                  f"(matmul probe {s['gflops']:.0f} GFLOP/s)")  # fmt: skip
            continue
        acc = "" if s["test_acc"] is None else f"{s['test_acc']:9.4f}"
        print(f"{loop:10}{s['epoch_s']:9.2f}{s['images_per_s']:8.0f}{s['first_step_s']:11.2f}"
              f"{s['peak_rss_mb']:12.0f}{s['rss_growth_mb']:11.1f}{acc}")  # fmt: skip
    t, p, same = summary["template"], summary["plain"], summary["plain_same"]
    steps = -(-t["n_train"] // args.batch_size)  # training steps per epoch
    overhead_us = (t["epoch_s"] - same["epoch_s"]) / steps * 1e6
    lightning = summary["lightning"]
    floor_us = (lightning["epoch_s"] - same["epoch_s"]) / steps * 1e6
    ratios = {
        "template/plain epoch": t["epoch_s"] / p["epoch_s"],
        "template/plain_same epoch": t["epoch_s"] / same["epoch_s"],
        "lightning/plain_same epoch": lightning["epoch_s"] / same["epoch_s"],
        "template/lightning epoch": t["epoch_s"] / lightning["epoch_s"],
        "template/bound epoch": t["epoch_s"] / summary["bound"]["epoch_s"],
        "plain/bound epoch": p["epoch_s"] / summary["bound"]["epoch_s"],
        "template/plain first step": t["first_step_s"] / p["first_step_s"],
    }
    if "augment" in summary:  # the per-batch augmentation on the device (experiment=robust)
        ratios["augment/template epoch"] = summary["augment"]["epoch_s"] / t["epoch_s"]
    if "origin" in summary:
        ratios["origin/template per image"] = summary["origin"]["s_per_image"] / t["s_per_image"]
    if "folder" in summary:
        f = summary["folder"]
        ratios["folder/template per image"] = f["s_per_image"] / t["s_per_image"]
        ratios["tvfolder/folder per image"] = summary["tvfolder"]["s_per_image"] / f["s_per_image"]
        ratios["tvfolder/folder epoch"] = summary["tvfolder"]["epoch_s"] / f["epoch_s"]
    for name, value in startup.items():
        if name != "import torch":
            ratios[f"{name} / import torch"] = value / startup["import torch"]
    print()
    for name, value in ratios.items():
        print(f"{name:34}{value:7.2f}")
    print(f"{'per-step overhead vs plain_same':34}{overhead_us:7.0f} us ({steps} steps/epoch)")
    print(f"{'  of which Lightning loop alone':34}{floor_us:7.0f} us (lightning - plain_same)")
    print(f"{'  of which the template':34}{overhead_us - floor_us:7.0f} us (template - lightning)")
    summary["per_step_overhead_us"] = overhead_us
    summary["lightning_floor_us"] = floor_us
    median = {k: summary[k]["step_median_us"] for k in ("template", "plain_same", "lightning")}
    print(f"{'  median step, template - plain_same':34}"
          f"{median['template'] - median['plain_same']:7.0f} us (between two optimizer steps;"
          f" Lightning alone {median['lightning'] - median['plain_same']:.0f} us)")  # fmt: skip
    summary["median_step_overhead_us"] = median["template"] - median["plain_same"]
    if "tiny_template" in summary:
        tiny = {k: summary[f"tiny_{k}"]["step_median_us"]
                for k in ("template", "plain_same", "lightning")}  # fmt: skip
        print(f"fixed cost per step (tiny network, 1 thread, median step): plain_same"
              f" {tiny['plain_same']:.0f} us, lightning {tiny['lightning']:.0f} us, template"
              f" {tiny['template']:.0f} us: overhead {tiny['template'] - tiny['plain_same']:.0f} us"
              f" = Lightning {tiny['lightning'] - tiny['plain_same']:.0f} us"
              f" + the template {tiny['template'] - tiny['lightning']:.0f} us")  # fmt: skip
        summary["fixed_overhead_us"] = tiny["template"] - tiny["plain_same"]
        summary["fixed_lightning_us"] = tiny["lightning"] - tiny["plain_same"]
        # microseconds move with the machine's day; these ratios, of one invocation, do not
        share = (tiny["template"] - tiny["lightning"]) / (tiny["lightning"] - tiny["plain_same"])
        print(
            f"{'  fixed cost, template / lightning':34}{tiny['template'] / tiny['lightning']:7.2f}"
            f" (median step); the template's own part / Lightning's own: {share:.2f}"
        )
        summary["fixed_template_over_lightning"] = tiny["template"] / tiny["lightning"]
        summary["fixed_template_share"] = share
    print("start-up (median of 3): " + ", ".join(f"{k} {v:.2f}s" for k, v in startup.items()))
    own = t["first_step_s"] - startup["import lightning"]
    print(f"first step: template {t['first_step_s']:.2f}s = import lightning"
          f" {startup['import lightning']:.2f}s + the template's own {own:.2f}s;"
          f" plain {p['first_step_s']:.2f}s = import torch {startup['import torch']:.2f}s"
          f" + {p['first_step_s'] - startup['import torch']:.2f}s")  # fmt: skip
    summary["template_own_startup_s"] = own
    if "folder" in summary:
        first, *cached = summary["folder_startup"]
        with_cache = ", ".join(f"{r['setup_s']:.2f}s" for r in cached)
        print(f"image folder, {first['n'] + N_VAL} train images: data setup in a fresh process"
              f" {first['setup_s']:.2f}s decoding into the cache, then with it"
              f" {with_cache}"
              f" (+ importing torch and Lightning: {cached[-1]['import_s']:.2f}s)")  # fmt: skip
    summary["ratios"], summary["startup_s"] = ratios, startup


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat: about 2 minutes")
    parser.add_argument("--no-origin", action="store_true", help="skip the origin loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every loop")
    parser.add_argument("--profile", action="store_true", help="also profile a template run")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="holds MNIST/raw/")
    parser.add_argument("--no-folder", action="store_true", help="skip the image-folder part")
    parser.add_argument("--augment", action="store_true",
                        help="also the template with experiment=robust's batch augmentation")  # fmt: skip
    parser.add_argument(
        "--folder",
        default=str(ROOT / "logs" / "bench" / "mnist_png"),
        help="where MNIST is written as PNG files for the image-folder part",
    )
    parser.add_argument("--no-fixed", action="store_true",
                        help="skip the fixed-cost part (tiny network, one thread)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(ROOT / "logs" / "bench.json"))
    parser.add_argument(
        "--child",
        choices=["plain", "plain_same", "lightning", "origin", "tvfolder", "startup"],
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.child:
        children = {"plain": run_plain, "origin": run_origin, "tvfolder": run_tvfolder,
                    "plain_same": lambda a: run_plain(a, same_kernels=True),
                    "lightning": run_lightning,
                    "startup": run_startup}  # fmt: skip
        return children[args.child](args)
    if args.quick:
        args.epochs, args.repeats = 1, 1

    from mnistlab.data.download import ensure_mnist  # fetch and verify once, before any timing

    ensure_mnist(Path(args.data_dir) / "MNIST" / "raw")
    loops = (
        ["template", "plain", "plain_same", "lightning"]
        + ([] if args.no_origin else ["origin"])
        + (["augment"] if args.augment else [])
        + ([] if args.no_fixed else ["tiny_template", "tiny_plain_same", "tiny_lightning"])
    )
    if not args.no_folder:
        folder_startup = folder_start_ups(args)
        loops += ["folder", "tvfolder"]
    runs = {loop: [] for loop in loops}
    for rep in range(args.repeats):
        for loop in loops[rep % len(loops) :] + loops[: rep % len(loops)]:  # rotate the order
            print(f"repeat {rep + 1}/{args.repeats}: {loop} ...", flush=True)
            runs[loop].append(launch(loop, args))
    if args.profile:
        print("profile: a template run under SimpleProfiler ...", flush=True)
        profile = launch("profile", args)
    py = sys.executable
    startup = {
        "import torch": time_command([py, "-c", "import torch"]),
        "import lightning": time_command([py, "-c", "import lightning"]),
        "--cfg job": time_command([py, "-m", "mnistlab.train", "--cfg", "job"]),
        "--help": time_command([py, "-m", "mnistlab.train", "--help"]),
    }
    summary = summarize(runs, matmul_flops(), args)
    if not args.no_folder:
        summary["folder_startup"] = folder_startup
    report(summary, startup, args)
    if args.profile:
        summary["profile"] = report_profile(profile, args)
    summary["args"] = vars(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
