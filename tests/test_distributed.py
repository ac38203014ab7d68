"""The fine-tune of notebook 08 on two processes: `torchrun --nproc_per_node 2 -m lora_edu.distributed` runs
data-parallel on the CPU (accelerate, gloo), exits with 0, and its per-step losses equal those of one process on
the same global batch within LOSS_TOL (the two differ only in the order of floating-point sums)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_edu import distributed

pytest.importorskip("accelerate")
pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
LOSS_TOL = 1e-4  # measured: 3e-7 over 10 steps on 2 CPU cores


def run_torchrun(*args, processes=2):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "lora_edu.distributed", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_match_one_process():
    done = run_torchrun("--steps", str(STEPS), "--global-batch", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout.strip().splitlines()[-1])
    assert two["processes"] == 2 and two["backend"] == "gloo"
    one = distributed.finetune(steps=STEPS, global_batch=8)
    assert one["processes"] == 1 and len(one["losses"]) == len(two["losses"]) == STEPS
    worst = max(abs(a - b) for a, b in zip(one["losses"], two["losses"]))
    assert worst <= LOSS_TOL, (one["losses"], two["losses"])
    assert one["losses"][-1] < one["losses"][0]  # it does learn


def test_a_global_batch_that_does_not_split_is_refused():
    done = run_torchrun("--steps", "1", "--global-batch", "3")
    assert done.returncode != 0
    assert "global_batch=3 must divide by the number of processes (2)" in done.stderr


def test_bad_arguments_are_refused_before_training():
    with pytest.raises(SystemExit):
        distributed.main(["--steps", "0"])
