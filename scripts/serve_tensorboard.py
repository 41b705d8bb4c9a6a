"""make tensorboard: TensorBoard on a log folder, bound to this machine, and the address to open.

The address opens the Time Series page with the validation curves (`PIN`, default val/acc and
val/loss) pinned at its top: TensorBoard's own pinned cards, named in its `pinnedCards` query
parameter, so the first screen shows them whatever the other tag groups are called. A pinned
tag no run has is left out by TensorBoard. Light: no torch, no Lightning.

    python scripts/serve_tensorboard.py LOGDIR PORT [PIN...]
"""

import json
import os
import sys
import urllib.parse
from pathlib import Path

PINNED = ("val/acc", "val/loss")
HOST = "127.0.0.1"


def url(host: str, port: int, pinned=PINNED) -> str:
    cards = [{"plugin": "scalars", "tag": tag} for tag in pinned]
    query = urllib.parse.urlencode({"pinnedCards": json.dumps(cards, separators=(",", ":"))})
    return f"http://{host}:{port}/?{query}#timeseries"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    logdir, port, pinned = argv[0], argv[1], argv[2:] or PINNED
    if not Path(logdir).is_dir():
        print(f"make tensorboard: LOGDIR={logdir}: no such folder (train a run first, or name"
              " one: LOGDIR=logs/train/multiruns/<timestamp>)", file=sys.stderr)  # fmt: skip
        return 2
    if not port.isdigit():
        print(f"make tensorboard: PORT={port}: a port number, e.g. 6006", file=sys.stderr)
        return 2
    print(f"TensorBoard on {logdir}; open:\n  {url(HOST, int(port), pinned)}", flush=True)
    board = Path(sys.executable).parent / "tensorboard"
    os.execv(board, [str(board), "--logdir", logdir, "--host", HOST, "--port", port])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
