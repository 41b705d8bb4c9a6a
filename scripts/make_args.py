"""How `make` hands ARGS to a command: `python scripts/make_args.py MODULE|SCRIPT.py [ARG...]`
runs `python -m MODULE ARG... <ARGS>` (or `python SCRIPT.py ...`), with $ARGS split as a shell
splits quoted words and nothing else: quotes group and a backslash escapes, but there is no
brace expansion, globbing or parenthesis syntax, so Hydra's `key={a:1,b:2}`, `choice(1,2)`,
`[a,b]` and `*` reach the command as typed. (Pasted into the recipe's command line, bash would
split `{a:1,b:2}` into two words and refuse `choice(1,2)`.) The process is replaced, not wrapped:
the command runs exactly as it would from a shell.
"""

import os
import shlex
import sys

target, *fixed = sys.argv[1:]
try:
    words = shlex.split(os.environ.get("ARGS", ""))
except ValueError as e:  # an unclosed quote
    sys.exit(f"make: ARGS: {e}: close the quote, or escape it with a backslash")
entry = [target] if target.endswith(".py") else ["-m", target]
os.execv(sys.executable, [sys.executable, *entry, *fixed, *words])
