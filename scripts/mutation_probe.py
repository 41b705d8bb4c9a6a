"""Mutation probe: does the fast test tier catch one-line bugs in core behaviour?

Each mutant replaces one line of the source (data, loss, metrics, checkpoints, resume, predict,
export) with a plausible mistake; the fast tier then runs against it (`-x`: it stops at the first
failure). A mutant is killed when the tier fails, survives when it passes. The source is put back
after each, whatever happens.

    .venv/bin/python scripts/mutation_probe.py                # every mutant, in this checkout
    .venv/bin/python scripts/mutation_probe.py --root DIR     # another checkout (an older commit)
    .venv/bin/python scripts/mutation_probe.py --only 3,7     # some of them

A mutant whose line is not in the checkout (another version of the code) is reported n/a.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = "src/mnistlab"
MUTANTS = [  # (file, the line as it is, the mutant, what it breaks)
    ("system.py", "return losses.mean(), logits", "return losses.sum(), logits",
     "loss summed, not averaged"),
    ("system.py", 'getattr(self, f"{stage}_loss").update(losses.detach())',
     'getattr(self, f"{stage}_loss").update(losses.detach()[:1])', "loss metric of 1 image"),
    ("system.py", "self.test_images.update(float(len(y)))",
     "self.test_images.update(float(len(y) - 1))", "test images miscounted"),
    ("system.py", "self.test_confusion.update(logits, y)", "self.test_confusion.update(logits, y.roll(1))",
     "confusion matrix of the wrong pairs"),
    ("system.py", 'self.log_global({"val/acc_best": self.val_acc_best.compute()}, prog_bar=True)',
     'self.log_global({"val/acc_best": acc}, prog_bar=True)', "val/acc_best is the last epoch's"),
    ("train.py", "model, datamodule=datamodule, ckpt_path=best or None, verbose=False",
     "model, datamodule=datamodule, ckpt_path=None, verbose=False", "tests the last weights"),
    ("train.py", 'extra["purge_step"] = resumed_step', 'extra["purge_step"] = None',
     "TensorBoard purge_step dropped on resume"),
    ("data.py", "return images.to(torch.float32).div(255).sub_(mean).div_(std)",
     "return images.to(torch.float32).div(255).sub_(mean)", "input not divided by std"),
    ("data.py", "generator = torch.Generator().manual_seed(self.seed + self.epoch)",
     "generator = torch.Generator().manual_seed(self.seed)", "the same shuffle every epoch"),
    ("data.py", "yield from order[self.rank :: self.num_replicas][self.skip :].tolist()",
     "yield from order[self.rank :: self.num_replicas].tolist()", "mid-epoch resume replays"),
    ("data.py", "order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))",
     "order = torch.arange(n)", "validation split not shuffled"),
    ("idx.py", "if len(data) - start != math.prod(shape):",
     "if len(data) - start < math.prod(shape):", "IDX with trailing bytes accepted"),
    ("checkpoint.py",
     'return None if actual == expected else f"sha256 {actual[:12]}..., expected {expected[:12]}..."',
     "return None", "checksum mismatch ignored"),
    ("checkpoint.py", 'torch.set_rng_state(state["torch"])', "pass",
     "torch RNG not restored on resume"),
    ("resume.py", 'return str(path), checkpoint["global_step"]', "return None, None",
     "resume starts over"),
    ("system.py", "return (logits / self.temperature).softmax(dim=1)",
     "return (logits / self.temperature).softmax(dim=0)", "probabilities over the batch"),
    ("export.py", "x = images.to(torch.float32).div(255).sub(self.mean).div(self.std)",
     "x = images.to(torch.float32).div(255).sub(self.mean)", "export skips the std"),
    ("image_folder.py", "classes = classes or dataset_classes(project_path(root))",
     "classes = classes or dataset_classes(project_path(root))[::-1]", "class order reversed"),
]  # fmt: skip
TIER = ["-m", "pytest", "-m", "not real_data and not slow", "-x", "-q", "-p", "no:cacheprovider"]


def run(root: Path, number: int, mutant) -> tuple[str, float]:
    name, line, mutated, _ = mutant
    path = root / SRC / name
    original = path.read_text()
    if original.count(line) != 1:
        return "n/a", 0.0
    path.write_text(original.replace(line, mutated))
    start = time.perf_counter()
    try:
        env = {**os.environ, "PYTHONPATH": str(root / "src")}  # this checkout's code
        proc = subprocess.run([sys.executable, *TIER], cwd=root, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        verdict = f"killed by {failed[0].split()[1]}" if proc.returncode else "SURVIVED"
        if proc.returncode and not failed:
            verdict = f"killed (exit {proc.returncode})"
    finally:
        path.write_text(original)
    return verdict, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--only", default="", help="mutant numbers, e.g. 1,4")
    args = parser.parse_args()
    chosen = {int(n) for n in args.only.split(",") if n} or set(range(1, len(MUTANTS) + 1))
    results = []
    for number, mutant in enumerate(MUTANTS, 1):
        if number in chosen:
            verdict, seconds = run(args.root.resolve(), number, mutant)
            results.append(verdict)
            print(f"{number:2d} {mutant[0]:16s} {mutant[3]:38s} {verdict} ({seconds:.0f} s)",
                  flush=True)  # fmt: skip
    applied = [r for r in results if r != "n/a"]
    killed = sum(r.startswith("killed") for r in applied)
    print(f"score: {killed}/{len(applied)} mutants killed ({len(results) - len(applied)} n/a)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
