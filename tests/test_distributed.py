"""Data-parallel training: two gloo processes on the CPU end with identical weights."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ._ddp_worker import train_rank


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("method", ["ddpm", "addm"])
def test_two_process_training_keeps_ranks_identical(tmp_path, method):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(train_rank, args=(2, _free_port(), str(tmp_path), method), nprocs=2, join=True)
    first, second = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    losses = first.pop("losses"), second.pop("losses")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # Each rank trained on its own batches (else this would be one process run twice).
    assert not torch.equal(*losses)
    # Only rank 0 wrote the checkpoint, and it holds the shared weights.
    written = load_file(tmp_path / "model" / "training_state.safetensors")
    for key, value in written.items():
        if key.startswith("net.model."):
            assert torch.equal(value, first["model." + key[len("net.model.") :]])
