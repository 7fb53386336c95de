"""A paired translator under torchrun: two CPU processes (gloo) train one network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperdomain.files.run_checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "translator_ddp_worker.py"


def _torchrun(nproc: int, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # torchrun with 2 processes
def test_ddp_two_processes_keep_ranks_identical_and_resume(tmp_path):
    out = tmp_path / "run"
    _torchrun(2, WORKER, out, 3)
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # weights and BN statistics
    tensors, meta = load_checkpoint(out / "checkpoint.safetensors", "translator")
    assert meta["step"] == 3 and meta["world"] == 2
    trained = {k[len("map."):]: v for k, v in tensors.items() if k.startswith("map.") and v.is_floating_point()}
    assert trained.keys() == r0.keys() and all(torch.equal(trained[k], r0[k]) for k in r0)  # rank 0 wrote it
    # the 2-process run continues on 1 process from step 3
    _torchrun(1, WORKER, out, 5, "--resume")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 6))
