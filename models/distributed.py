"""`--nproc N`: the training and embed jobs on N processes under torchrun (PyTorch's own launcher).

The CLI process stays a launcher: it writes the job (a frozen dataclass of `models.pipeline`) as JSON
and runs `python -m torch.distributed.run --standalone --nproc-per-node N -m models.distributed TASK
JOB.json`. torchrun starts the N workers with RANK / WORLD_SIZE / LOCAL_RANK and a rendezvous on this
machine; each worker joins the process group (gloo on CPU, NCCL when CUDA is available), runs the job
with its `World`, and leaves. Rank 0 alone writes files and prints the summary; the launcher returns
torchrun's exit status (non-zero if any worker failed: torchrun then stops the others).

Usage::

    from models.distributed import launch
    from models.pipeline import TrainJob
    rc = launch("train_vm", TrainJob(n_events=20_000, out_dir="runs/x"), nproc=2)

Training is data-parallel (DistributedDataParallel, rows split per rank and per epoch by
`models.world.World.shard`); the embed job splits users by `models.embed.user_shard`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from models.pipeline import EmbedJob, FMJob, TrainJob, run_embed_job, run_fm_job, run_train_job, vm_summary
from models.world import World

JOBS = {"train_vm": TrainJob, "train_fm": FMJob, "embed": EmbedJob}
MAX_PROCS = 64
_PROJECT_PACKAGES = frozenset({"models", "embedding_cache", "exporters"})


class LaunchError(ValueError):
    """`--nproc` is out of range, or the task is not one torchrun runs here."""


def launch(task: str, job: TrainJob | FMJob | EmbedJob, nproc: int) -> int:
    """Runs `job` on `nproc` processes under torchrun on this machine; returns the exit status."""
    if task not in JOBS or not isinstance(job, JOBS[task]):
        raise LaunchError(f"task {task!r} runs a {JOBS.get(task, type(None)).__name__}, got {type(job).__name__}")
    if not 1 <= nproc <= MAX_PROCS:
        raise LaunchError(f"--nproc must be in [1, {MAX_PROCS}], got {nproc}")
    with tempfile.TemporaryDirectory(prefix=f"adrank-{task}-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(asdict(job)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "models.distributed", task, str(job_file), str(Path(tmp) / "parts")]
        # torchrun sets one intra-op thread per worker and warns that it did; the jobs set their own
        # (models.loop.start_run splits the configured threads between the ranks).
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        rc = subprocess.run(cmd, env=env, check=False).returncode
        refusals = sorted(Path(tmp).glob("error-*.txt"))
        if rc and refusals:  # a worker refused the job (bad flag, file, schema): say why last, as one process does
            print(f"error: {refusals[0].read_text()}", file=sys.stderr)
            return 2
        return rc


def init_world() -> World:
    """Joins the process group torchrun set up: NCCL with one GPU per local rank when CUDA is available,
    gloo on CPU otherwise (gloo needs no setting on one machine: the rendezvous is on localhost)."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def run_worker(task: str, job_file: str | Path, parts_dir: str | Path) -> int:
    """One torchrun worker: joins the group, runs its share of the job, prints rank 0's summary."""
    import torch.distributed as dist

    job = JOBS[task](**json.loads(Path(job_file).read_text()))
    world = init_world()
    try:
        if task == "train_vm":
            result, ckpt = run_train_job(job, world=world)
            summary = vm_summary(job, result, ckpt) if world.is_main else ""
        elif task == "train_fm":
            summary = run_fm_job(job, world=world) or ""
        else:
            summary = run_embed_job(job, world=world, parts_dir=parts_dir)
        if summary:
            print(summary, flush=True)
        # both ranks leave the group together: a rank that tears gloo down while its peer is still
        # closing connections can abort at exit ("terminate called without an active exception")
        dist.barrier()
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in _PROJECT_PACKAGES:
            raise  # a bug: torchrun reports the traceback
        # a refusal on purpose (the CLI's rule: the project's typed errors name the flag or file at fault)
        Path(job_file).with_name(f"error-{world.rank:05d}.txt").write_text(str(exc))
        return 2
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in JOBS:
        print(f"usage: python -m models.distributed {{{','.join(JOBS)}}} JOB.json PARTS_DIR (run by torchrun)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(run_worker(*sys.argv[1:]))
