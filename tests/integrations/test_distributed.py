"""Distributed jobs: each rank knows its place, measures its own GPU, and host devices are
measured once per host — checked on the launcher's variables, on detection over a fake NVML with
several GPUs and a RAPL tree, and on a real two-rank DDP run under torchrun (gloo, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenmaas.analysis import read_ledger
from greenmaas.distributed import Rank, detect_rank, own_gpu
from greenmaas.errors import ConfigError
from greenmaas.sources.base import Unused
from greenmaas.sources.detect import detect
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import FakeGPU, FakeNVML
from greenmaas.testing.rapl import make_rapl_tree

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_slurm_and_given_jobs_are_read():
    assert detect_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "TORCHELASTIC_RUN_ID": "job-7"}) == Rank(3, 1, 4, 2, "job-7", "torchrun")
    assert detect_rank({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "991",
                        "SLURM_STEP_ID": "2"}) == Rank(5, 1, 8, None, "991.2", "slurm")
    assert detect_rank({"RANK": "0", "WORLD_SIZE": "2", "GREENMAAS_JOB_ID": "mine"}).job_id == "mine"
    assert detect_rank({"GREENMAAS_JOB_ID": "solo"}) == Rank(0, 0, 1, 1, "solo", "given")
    assert detect_rank({}) is None
    with pytest.raises(ConfigError, match="LOCAL_RANK='one'"):
        detect_rank({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "one"})


def test_each_rank_takes_its_own_visible_gpu():
    r1 = Rank(1, 1, 2, 2, None, "torchrun")
    assert own_gpu(r1, {}) == "1"
    assert own_gpu(r1, {"CUDA_VISIBLE_DEVICES": "4,6"}) == "6"
    assert own_gpu(r1, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == "GPU-abc"  # bound to one GPU of its own
    assert own_gpu(Rank(2, 2, 3, 3, None, "torchrun"), {"CUDA_VISIBLE_DEVICES": "4,6"}) == ""  # none left


def test_detection_for_a_rank_counts_each_device_once(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=1, dram=True)
    gpus = [FakeGPU(uuid=f"GPU-{i}") for i in range(4)]
    seen = {}
    for local in range(4):
        rank = Rank(local, local, 4, 4, "j", "torchrun")
        found = detect(nvml=FakeNVML(gpus, clock=FakeClock()), rapl_root=tree.root,
                       visible_devices=own_gpu(rank, {}), host_devices=rank.measures_host)
        seen[local] = [(d.id, d.uuid) for d in found.devices()]
        if not rank.measures_host:
            assert {u.source for u in found.unused} >= {"rapl", "cpu-estimate"}
            assert all(isinstance(u, Unused) and "local rank 0" in u.reason for u in found.unused)
        for s in found.sources:
            s.close()
    gpu_uuids = [uuid for devs in seen.values() for dev, uuid in devs if dev.startswith("gpu")]
    assert sorted(gpu_uuids) == [f"GPU-{i}" for i in range(4)]  # every GPU once, by its own rank
    host = [dev for devs in seen.values() for dev, _ in devs if not dev.startswith("gpu")]
    assert sorted(host) == ["cpu:0", "dram:0"]  # the host's devices once, by local rank 0
    assert {dev for dev, _ in seen[0]} >= {"cpu:0", "dram:0"}


def test_a_two_rank_ddp_run_is_one_job_with_each_device_once(tmp_path):
    ledger = tmp_path / "ddp.db"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GREENMAAS_JOB_ID")}
    env["GREENMAAS_LOCATION"] = "FR"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "examples" / "train_ddp.py"), "--ledger", str(ledger), "--epochs", "2", "--steps", "10"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = read_ledger(ledger, "runs")
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}
    dist = [c["distributed"] for c in runs["config"]]
    assert sorted(d["rank"] for d in dist) == [0, 1]
    assert len({d["job_id"] for d in dist}) == 1 and all(d["world_size"] == 2 for d in dist)
    # Host devices once: only local rank 0's run measured the CPU; the other says why not.
    by_rank = {c["distributed"]["rank"]: (run_id, devices, c)
               for run_id, devices, c in zip(runs["run_id"], runs["devices"], runs["config"])}
    assert [d["id"] for d in by_rank[1][1]] == []
    assert any("local rank 0" in u["reason"] for u in by_rank[1][2]["unused"])
    totals = read_ledger(ledger, "devices")
    assert set(totals["run_id"]) == {by_rank[0][0]}
    spans = read_ledger(ledger)
    assert set(spans.groupby("run_id").size().index) == {by_rank[0][0], by_rank[1][0]}
    # The books of the one measured device close: spans (rank 0's) + idle = its total.
    measured = spans[spans["run_id"] == by_rank[0][0]]
    assert measured["self_energy_j"].sum() + totals["idle_j"].sum() == pytest.approx(totals["total_j"].sum(), rel=1e-9)
    assert spans[spans["run_id"] == by_rank[1][0]]["energy_j"].isna().all()  # not measured: no figure, not 0 J
    # The report by rank and by job, as a user asks for it: one job, two ranks, the books close.
    from click.testing import CliRunner

    from greenmaas_cli.main import cli

    import json

    for by, groups in (("rank", {"0", "1", "(idle)"}), ("job", {dist[0]["job_id"], "(idle)"})):
        out = CliRunner().invoke(cli, ["report", "--ledger", str(ledger), "--by", by, "--format", "json"])
        assert out.exit_code == 0, out.output
        rows = {r["group"]: r for r in json.loads(out.stdout)}
        assert set(rows) == groups, (by, set(rows))
        total = sum(r["energy_j"] or 0.0 for r in rows.values())
        assert total == pytest.approx(totals["total_j"].sum(), rel=1e-9)
    assert rows[dist[0]["job_id"]]["spans"] == len(spans)
