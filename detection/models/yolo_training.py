"""Training of the embedded demo YOLO models (ultralytics detect / pose, built from a yaml), fully offline."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class YoloTraining:
    epochs: int = 8
    imgsz: int = 320
    batch: int = 16
    lr0: float = 0.004
    workers: int = 2


def prepare_ultralytics(config_dir: str | Path) -> None:
    """Point ultralytics at a private config dir with a font in place, so train/val never try to download."""
    config_dir = Path(config_dir)
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        import matplotlib

        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def train_yolo(arch: str | Path, data_yaml: str | Path, out: str | Path, cfg: YoloTraining, *, seed: int = 0,
               work_dir: str | Path, init_from: str | Path | None = None, device: str = "cpu") -> Path:
    """Train an ultralytics model from its yaml (optionally starting from matching weights of ``init_from``) and
    write the final weights to ``out`` without the run's date, so equal training gives an equal file."""
    prepare_ultralytics(Path(work_dir) / "ultralytics")
    from ultralytics import YOLO

    model = YOLO(str(arch))
    if init_from is not None:
        model.load(str(init_from))
    model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, workers=cfg.workers,
                device=device, amp=False, plots=False, val=False, seed=seed, deterministic=True, cache=True,
                optimizer="AdamW", lr0=cfg.lr0, lrf=0.1, warmup_epochs=0.3, close_mosaic=2, verbose=False,
                project=str(Path(work_dir).absolute() / "runs"), name=Path(out).stem, exist_ok=True)
    last = Path(model.trainer.last)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    for volatile in ("date", "git", "train_results", "optimizer", "updates", "epoch", "best_fitness"):
        ckpt.pop(volatile, None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out
