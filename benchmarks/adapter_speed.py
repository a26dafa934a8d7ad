"""Adapter speed benchmark; same as ``audiomoe bench adapter``.

.venv/bin/python benchmarks/adapter_speed.py --json bench-adapter.json
"""

import sys

from audiomoe.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "adapter", *sys.argv[1:]]))
