"""Runs a command with CPU-bound processes beside it: ``python scripts/burn.py 2 -- pytest -x``.

The burners spin until the command ends; the exit status is the command's. ``make test-stress``
runs the whole suite this way, to show that no test leans on the machine being idle.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys


def spin() -> None:
    n = 0
    while True:
        n = (n * 1103515245 + 12345) % 2**31


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python scripts/burn.py N -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    burners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(int(argv[0]))]
    for burner in burners:
        burner.start()
    try:
        return subprocess.call(argv[2:])
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.join()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
