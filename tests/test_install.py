"""A non-editable install works: the wheel carries the configs, and the installed command trains
from any folder, writing where `paths.log_dir` says."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from runner import cli_args

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_trains_from_another_folder(tmp_path, synthetic_mnist):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(wheels), str(ROOT)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("mnistlab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The fresh environment's own site-packages get the wheel; torch, Lightning and the rest are
    # borrowed from this one (a .pth line), without its editable install of this project.
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
               "--target", site, str(wheel)]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (Path(site) / "bin").rename(venv / "bin" / "installed")  # the console scripts pip wrote

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import mnistlab.lab.config as c; print(c.CONF_DIR)"],
                           cwd=elsewhere, check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(site), where  # the installed copy, not this checkout
    logs = tmp_path / "my_logs"
    args = [a for a in cli_args(synthetic_mnist, logs / "x") if not a.startswith("hydra.run")]
    args = [*[a for a in args if not a.startswith("paths.log_dir")], f"paths.log_dir={logs}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = venv / "bin" / "installed" / "mnistlab-train"
    proc = subprocess.run([python, script, *args, "trainer.max_epochs=1"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    assert (run / "results.json").is_file() and (run / "train.log").is_file()
    assert not (elsewhere / "logs").exists() and not (ROOT / "conf").samefile(where.strip())
