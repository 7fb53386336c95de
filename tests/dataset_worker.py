"""`hyperdomain dataset ARGS` in this process, stalling for good inside step K + 1 (a call of
``render_rows``: ``--batch`` images rounded up to whole 8-row passes) after
writing READY: the test then kills it mid-shard with SIGKILL.

    python tests/dataset_worker.py READY K dataset --generator ... --out DIR
"""
import sys
import time
from pathlib import Path

import hyperdomain.datasets.make as make
from cli.main import main

ready, steps, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
real = make.render_rows
calls = []


def stalling(*a, **k):
    calls.append(1)
    if len(calls) > steps:
        ready.write_text("stalled")
        time.sleep(3600)
    return real(*a, **k)


make.render_rows = stalling
main(args)
