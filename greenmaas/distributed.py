"""Where this process sits in a distributed job: rank, local rank, world size, host, job id.

Read from the launcher's environment — ``torchrun`` / ``torch.distributed.run`` (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``TORCHELASTIC_RUN_ID``) or Slurm
(``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_JOB_ID``, ``SLURM_STEP_ID``) —
or given (``GREENMAAS_JOB_ID`` names the job whatever launched it; ``GREENMAAS_HOST`` the host).

A :class:`~greenmaas.Meter` that detects its own devices uses it so that every device of a job is
measured once (a meter given ``sources=`` is left alone):

* a rank measures only its own GPU: the ``LOCAL_RANK``-th visible one (``CUDA_VISIBLE_DEVICES``
  honoured), the way ``torch.cuda.set_device(local_rank)`` picks it;
* host devices (CPU packages, DRAM, the CPU estimate) are measured by local rank 0 of each host
  only. The other ranks' host work shows in rank 0's host figures (its spans and idle): greenmaas
  does not yet divide one device among several processes, and says so in the run's ``unused``.

Each run records ``config["distributed"]`` (rank, local rank, world size, local world size, job id,
launcher); ``read_ledger(table="runs")`` and the runs' host column give the job's layout.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["Rank", "detect_rank", "own_gpu", "host_name"]


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int | None
    job_id: str | None
    launcher: str  # "torchrun", "slurm" or "given"

    @property
    def measures_host(self) -> bool:
        """Whether this rank measures its host's own devices (CPU, DRAM): local rank 0."""
        return self.local_rank == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_name(environ: Mapping[str, str] | None = None) -> str:
    """``GREENMAAS_HOST`` if set (containers get random names), else the machine's name."""
    env = os.environ if environ is None else environ
    return (env.get("GREENMAAS_HOST") or "").strip() or socket.gethostname()


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is negative")
    return value


def detect_rank(environ: Mapping[str, str] | None = None) -> Rank | None:
    """The rank this process has in a distributed job, or None outside one (no launcher
    variables). A malformed variable raises :class:`ConfigError` naming it."""
    env = os.environ if environ is None else environ
    given_job = (env.get("GREENMAAS_JOB_ID") or "").strip() or None
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if rank is not None and world is not None:
        local = _int(env, "LOCAL_RANK")
        job = given_job or (env.get("TORCHELASTIC_RUN_ID") or "").strip() or None
        return Rank(rank, local if local is not None else rank, world, _int(env, "LOCAL_WORLD_SIZE"), job,
                    "torchrun")
    rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    if rank is not None and world is not None:
        local = _int(env, "SLURM_LOCALID")
        job = given_job
        if job is None and (env.get("SLURM_JOB_ID") or "").strip():
            step = (env.get("SLURM_STEP_ID") or "").strip()
            job = env["SLURM_JOB_ID"].strip() + (f".{step}" if step else "")
        return Rank(rank, local if local is not None else rank, world, _int(env, "SLURM_NTASKS_PER_NODE"), job,
                    "slurm")
    if given_job is not None:
        return Rank(0, 0, 1, 1, given_job, "given")
    return None


def own_gpu(rank: Rank, environ: Mapping[str, str] | None = None) -> str:
    """The GPU a rank uses, as a ``CUDA_VISIBLE_DEVICES`` value for the NVML source: the
    ``local_rank``-th visible device, or the only one when each rank is given one of its own
    (Slurm's GPU binding). Ranks that share a single visible GPU would each measure it whole."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(rank.local_rank)
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    if len(entries) == 1:
        return entries[0]
    if rank.local_rank < len(entries):
        return entries[rank.local_rank]
    return ""  # fewer GPUs than local ranks: this rank has none of its own
