"""``fairbench mitigate`` unchanged under torchrun: two CPU processes (gloo) train one SimPO adapter on
the tiny model; only the main process writes the artifact and registers the derived model."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.integration
def test_simpo_distill_under_torchrun_two_cpu_processes(tmp_path, tiny_models_file):
    torchrun = Path(sys.executable).with_name("torchrun")
    fairbench = Path(sys.executable).with_name("fairbench")
    if not torchrun.exists() or not fairbench.exists():
        pytest.skip("torchrun or the fairbench console script is not installed next to this Python")
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 6\nvariants_per_case: 2\nepochs: 1\nbatch_size: 2\n")
    out = tmp_path / "artifact"
    cache = tmp_path / "cache"  # this test's own registry of derived models (the session cache holds other tests')
    env = {**os.environ, "FAIRBENCH_CACHE": str(cache), "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    # Its own session, so that a timeout ends torchrun *and* its workers (killing torchrun alone orphans them).
    proc = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "--no-python", str(fairbench),
         "mitigate", "--method", "simpo-distill", "--model", "tiny", "--models-file", str(tiny_models_file),
         "--config", str(cfg), "-o", str(out), "-q"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    # Exactly one registration, printed once (by the main process).
    assert stdout.split() == ["tiny+simpo-distill"]
    registered = yaml.safe_load((cache / "derived_models.yaml").read_text())["models"]
    assert list(registered) == ["tiny+simpo-distill"]
    assert len(list(out.glob("manifest.json"))) == 1 and (out / "adapter" / "adapter_model.safetensors").is_file()
    train = json.loads((out / "manifest.json").read_text())["artifact"]["training"]
    n_pairs = json.loads((out / "manifest.json").read_text())["artifact"]["n_pairs"]
    assert train["world_size"] == 2
    per = {p["rank"]: p for p in train["per_process"]}
    assert sorted(per) == [0, 1]
    # Both processes trained, each on its own shard: ceil(pairs / (2 processes x batch 2)) batches per epoch.
    shard = -(-n_pairs // 4)
    assert all(p["steps"] == train["global_steps"] == shard and p["batches_per_epoch"] == shard for p in per.values()), (per, n_pairs)
