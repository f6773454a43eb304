"""Worker for the 2-process data-parallel test (importable by spawned processes)."""

from __future__ import annotations

import os


def train_rank(rank: int, world: int, port: int, folder: str, method: str) -> None:
    import torch
    from safetensors.torch import save_file

    from napari_uad.data.phantoms import make_dataset
    from napari_uad.training import distributed
    from napari_uad.training.api import create_trainer
    from napari_uad.training.dataset import slices_from_arrays

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    device = distributed.init_from_env("cpu")
    data = make_dataset(16, size=32, seed=0)
    trainer = create_trainer(
        slices_from_arrays(data["images"], data["masks"]),
        method=method,
        out=os.path.join(folder, "model"),
        steps=4,
        grid=32,
        base_channels=8,
        batch_size=4,
        warmup_steps=1,
        checkpoint_every=2,
        preview_every=0,
        device=device,
        calibrate=False,
    )
    result = trainer.run()
    tensors = {
        f"{name}.{key}": value.detach().contiguous()
        for name, net in trainer.networks.items()
        for key, value in net.state_dict().items()
    }
    tensors["losses"] = torch.tensor(result.losses)
    save_file(tensors, os.path.join(folder, f"rank{rank}.safetensors"))
    distributed.shutdown()
