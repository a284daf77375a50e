"""Train smplx-pose-priors' hand VAE with its own Lightning code, in its own environment (not genflow's).

Run by `benchmarks/parity/hand_vae_side_by_side.py` with the source's Python (torch, pytorch_lightning,
matplotlib, seaborn); it imports the source's `train_hand_vae_lightning.HandVAELightningModule` and
`hand_vae_datamodule.HandVAEDataModule` from `--source` and sets the trainer up as the source's
`main()` does (AdamW with its cosine per epoch, gradient clip 1.0, ModelCheckpoint top-3 and last on
`val/loss`, EarlyStopping patience 20), with these differences, all forced by running on one CPU
core: precision `bf16-mixed` (its `16-mixed` is fp16, meant for a GPU), `num_workers=0`, `devices=1`, no progress bar;
and its `setup`'s one `self.log` call, which Lightning 2.x refuses there, is dropped.

`--pipeline intended` keeps the data module's statistics but hands the model raw poses, so the poses
are standardised once (by the model), which is what the source's code means to do; `shipped` runs it
as published (standardised by the data module and again by the model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="the source's layout: <Set>.npz files")
    parser.add_argument("--splits-dir", type=Path, required=True, help="{train,val,test}_samples.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-type", choices=("standard", "so3"), default="standard")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", choices=("intended", "shipped"), default="intended")
    # its so3 loss is NaN from the first step under 16-bit autocast (its arccos clamp at 1 - 1e-6 rounds to 1 there)
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning precision (32-true for its so3 model on CPU)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(args.source))
    import pytorch_lightning as pl
    from hand_vae_datamodule import HandVAEDataModule
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger
    from train_hand_vae_lightning import HandVAELightningModule

    class OnceStandardised(HandVAEDataModule):
        """The data module's statistics reach the model, the poses reach it raw."""

        def setup(self, stage=None):
            super().setup(stage)
            for dataset in (self.train_dataset, self.val_dataset, self.test_dataset):
                if dataset is not None:
                    dataset.standardize = False

    class Module(HandVAELightningModule):
        """Its `setup` calls `self.log`, which Lightning 2.x refuses there: that one call is dropped."""

        def setup(self, stage=None):
            self.log = lambda *args, **kwargs: None
            try:
                super().setup(stage)
            finally:
                del self.log

    pl.seed_everything(args.seed, workers=True)
    module_class = OnceStandardised if args.pipeline == "intended" else HandVAEDataModule
    datamodule = module_class(data_dir=str(args.data_dir), splits_dir=str(args.splits_dir), batch_size=args.batch_size,
                              num_workers=0, pin_memory=False, return_dict=False, standardize=True)
    model = Module(model_type=args.model_type, z_dim=24, hidden=256, n_layers=3, dropout=0.1,
                                   learning_rate=3e-4, weight_decay=1e-4, kl_warmup_epochs=10, beta_max=1.0, free_bits=0.0)
    checkpoints = ModelCheckpoint(dirpath=args.out / "checkpoints", filename="hand_vae_{epoch:02d}_{val_loss:.4f}",
                                  monitor="val/loss", mode="min", save_top_k=3, save_last=True)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, precision=args.precision,
                         logger=CSVLogger(save_dir=str(args.out), name="logs"),
                         callbacks=[checkpoints, EarlyStopping(monitor="val/loss", patience=20, mode="min", min_delta=1e-4),
                                    LearningRateMonitor(logging_interval="epoch")],
                         gradient_clip_val=1.0, log_every_n_steps=50, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    seconds = time.perf_counter() - start
    summary = {"best_checkpoint": checkpoints.best_model_path, "best_val_loss": float(checkpoints.best_model_score),
               "epochs_run": trainer.current_epoch, "train_seconds": round(seconds, 1), "pipeline": args.pipeline,
               "model_type": args.model_type, "seed": args.seed, "precision": args.precision, "torch": torch.__version__,
               "pytorch_lightning": pl.__version__, "threads": torch.get_num_threads()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
