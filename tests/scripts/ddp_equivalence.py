"""Train tiny CASS arms for a few steps on 1 or 2 CPU processes (gloo) and save the result.

Run as a script (Lightning's ddp launcher re-runs this file for rank 1):
    python tests/scripts/ddp_equivalence.py --devices 2 --out result.pt
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from cass_lightning import CASSModule

GLOBAL_BATCH = 16


class RecordLoss(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach()
        if trainer.world_size > 1:  # the global loss is the mean of the per-rank means
            loss = pl_module.all_gather(loss).mean()
        self.losses.append(float(loss))


class FixedOrder(L.LightningDataModule):
    """Rank r gets samples r, r + W, r + 2W, ...: step k of W processes sees exactly the
    global batch k of one process (Lightning's own sampler would shuffle)."""

    def __init__(self, images: torch.Tensor, devices: int) -> None:
        super().__init__()
        self.images, self.devices = images, devices

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.images)
        sampler = None
        if self.devices > 1:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=GLOBAL_BATCH // self.devices, sampler=sampler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.randn(GLOBAL_BATCH * args.steps, 3, 32, 32)
    L.seed_everything(7)
    # ConvNeXt uses LayerNorm: SyncBatchNorm needs GPUs, and per-rank BatchNorm statistics on
    # half batches would differ from one process by design.
    model = CASSModule(
        cnn="convnext_atto", vit="vit_tiny_patch16_224", img_size=32, head_dim=32, pretrained=False
    )
    record = RecordLoss()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=FixedOrder(images, args.devices))
    if trainer.is_global_zero:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"state": state, "losses": record.losses}, args.out)


if __name__ == "__main__":
    main()
