"""The pieces of `--nproc` that need no second process: the user hash, the launcher's refusals, job flags."""

import numpy as np
import pytest

from models.distributed import LaunchError, launch
from models.embed import user_shard
from models.pipeline import EmbedJob, FMJob, JobError, TrainJob


def test_user_shard_is_stable_and_balanced():
    # pinned: a user must land in the same shard on every machine and in every release
    assert user_shard(np.array([0, 1, 2, 3, 10**9]), 3).tolist() == [1, 2, 1, 0, 1]
    shards = user_shard(np.arange(100_000), 4)
    assert shards.min() == 0 and shards.max() == 3
    assert np.abs(np.bincount(shards) - 25_000).max() < 500
    assert (user_shard(np.arange(50), 1) == 0).all()


def test_launch_refuses_bad_process_counts_and_mismatched_jobs():
    with pytest.raises(LaunchError, match=r"--nproc must be in \[1, 64\]"):
        launch("train_vm", TrainJob(), 0)
    with pytest.raises(LaunchError, match="runs a FMJob"):
        launch("train_fm", TrainJob(), 2)


def test_embed_job_checks_split_and_since():
    assert EmbedJob(since="auto").since_value == "auto" and EmbedJob(since="123").since_value == 123
    assert EmbedJob().since_value is None
    with pytest.raises(JobError, match="--since must be 'auto' or a time in ms"):
        EmbedJob(since="yesterday")
    with pytest.raises(JobError, match="--split"):
        EmbedJob(split="valid")
    assert FMJob(epochs=1).epochs == 1
