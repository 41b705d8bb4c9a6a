"""`make <command> ARGS="..."` hands ARGS over as typed (scripts/make_args.py): braces, commas,
parentheses, quotes and spaces reach Hydra whole, where bash pasted into the recipe split
`{a:1,b:2}` in two and refused `choice(1,2)`."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def make(*args: str, env_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), *args, "STAMP=", f"BIN={Path(sys.executable).parent}",
         f"ARGS={env_args}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_braces_parentheses_quotes_and_spaces_reach_the_command_as_typed():
    args = ("--cfg job model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,"
            "_partial_:true,T_max:3} name='my run' \"model.optimizer.lr=2e-3\"")  # fmt: skip
    proc = make("train", env_args=args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["scheduler"]["T_max"] == 3 and cfg["model"]["scheduler"]["_partial_"]
    assert cfg["name"] == "my run" and cfg["model"]["optimizer"]["lr"] == 2e-3
    sweep = make("train", env_args="--cfg job 'model.optimizer.lr=choice(1e-3,2e-3)'")
    assert "syntax error" not in sweep.stderr  # bash's, before: now Hydra's own word on it


def test_an_unclosed_quote_in_args_is_one_line():
    proc = make("train", env_args="name='my run")
    assert proc.returncode != 0
    make_own = r"make(\[\d+\])?: (\*\*\*|Entering|Leaving)"  # under `make test`: make[1]
    (line,) = [ln for ln in proc.stderr.splitlines() if not re.match(make_own, ln)]
    assert line.startswith("make: ARGS: No closing quotation"), proc.stderr


def test_no_recipe_pastes_args_into_its_command_line():
    recipes = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("\t")]
    assert not [r for r in recipes if re.search(r"\$\(ARGS\)", r)]
