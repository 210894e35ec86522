"""Training and evaluation loops, and the recipe that produced the shipped checkpoints.

``train`` and ``evaluate`` work on any classifier and any loader yielding ``(images, labels)`` batches
(images float32 ``[B, 1, 28, 28]``, labels int64 ``[B]``). The CLI trains ``lowbit/checkpoints/<model>.pt``::

    python -m lowbit.train --model cnn --epochs 12 --seed 0 --source full --out lowbit/checkpoints/cnn.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from lowbit.utils import device as default_device
from lowbit.utils import seed_everything

__all__ = ["train", "evaluate", "random_shift_flip", "main"]

Batch = tuple[torch.Tensor, torch.Tensor]


def _limited(loader: Iterable[Batch], max_batches: int | None) -> Iterable[Batch]:
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches <= 0):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        yield batch


def _num_batches(loader: Iterable[Batch], max_batches: int | None) -> int | None:
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return min(total, max_batches) if max_batches is not None else total


Hook = Callable[..., object]


def _as_list(hooks: Hook | Iterable[Hook] | None) -> list[Hook]:
    if hooks is None:
        return []
    return [hooks] if callable(hooks) else list(hooks)


def train(model: nn.Module, loader: Iterable[Batch], epochs: int = 1, lr: float = 1e-3,
          optimizer: torch.optim.Optimizer | None = None, device: torch.device | str | None = None,
          progress: bool = True, max_batches: int | None = None,
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
          extra_loss: Hook | Iterable[Hook] | None = None, before_step: Hook | Iterable[Hook] | None = None,
          after_step: Hook | Iterable[Hook] | None = None, mode: str = "train", desc: str = "epoch"
          ) -> list[float]:
    """Train ``model`` and return the per-batch losses (floats, in order). The one training loop of the
    package: QAT, ``kmeans.finetune_codebooks`` and later AdaRound run through it with hooks.

    Each batch ``(inputs, targets)``: ``loss = loss_fn(model(inputs), targets) + Σ extra_loss(model)`` (e.g.
    PACT's ``qat.alpha_penalty``, a rounding regularizer); gradients zeroed (the model's and the
    optimizer's), ``loss.backward()``; every ``before_step(model)`` (e.g. turn weight gradients into centroid
    gradients); ``optimizer.step()``; every ``after_step(model, step_index, loss_value)`` (e.g. write
    codebooks back, anneal a temperature); then ``scheduler.step()`` (per batch) if given.

    Uses ``optimizer`` when given, else Adam over ``model.parameters()`` with learning rate ``lr`` — built
    here, before the first batch, so every parameter must already exist (``qat.prepare_qat`` guarantees it;
    a trainable parameter that first appears during the first batch, outside the optimizer, raises RuntimeError).
    ``augment`` (optional) maps an input batch to an augmented one. ``max_batches`` caps the batches per
    epoch. ``mode``: ``"train"`` (default) or ``"eval"`` (BatchNorm statistics and dropout frozen while
    training). ``device``: where the model and batches go (default ``lowbit.device()``; ``"keep"``: leave
    the model where it is and the batches as they come). The model is left in ``mode``.
    """
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    dev = None if device == "keep" else (torch.device(device) if device is not None else default_device())
    if dev is not None:
        model.to(dev)
    model.train(mode == "train")
    existing = {id(p) for p in model.parameters()}
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    extra, before, after = _as_list(extra_loss), _as_list(before_step), _as_list(after_step)
    losses: list[float] = []
    total = _num_batches(loader, max_batches)
    for epoch in range(epochs):
        bar = tqdm(_limited(loader, max_batches), total=total, desc=f"{desc} {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for images, labels in bar:
            if dev is not None:
                images, labels = images.to(dev), labels.to(dev)
            if augment is not None:
                images = augment(images)
            loss = loss_fn(model(images), labels)
            for term in extra:
                loss = loss + term(model)
            model.zero_grad(set_to_none=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for hook in before:
                hook(model)
            optimizer.step()
            if not losses:
                _check_no_late_parameters(model, optimizer, existing)
            for hook in after:
                hook(model, len(losses), loss.item())
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def _check_no_late_parameters(model: nn.Module, optimizer: torch.optim.Optimizer, existing: set[int]) -> None:
    """Raise if the first batch created trainable parameters the optimizer (built before it) does not hold:
    they would silently never train."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    late = [name for name, p in model.named_parameters()
            if p.requires_grad and id(p) not in existing and id(p) not in held]
    if late:
        raise RuntimeError(f"the first forward pass created parameters {late} after the optimizer was built, so "
                           "it would never update them: create every parameter before training (in __init__ or "
                           "a Quantizer's prepare(example), as lowbit.quant.qat.prepare_qat does), then build "
                           "the optimizer")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], device: torch.device | str | None = None,
             max_batches: int | None = None) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` as a fraction in [0, 1] (eval mode, no gradients).

    The model's previous train/eval mode is restored afterwards.
    """
    dev = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.to(dev).eval()
    correct, seen = 0, 0
    try:
        for images, labels in _limited(loader, max_batches):
            predictions = model(images.to(dev)).argmax(dim=1)
            correct += (predictions == labels.to(dev)).sum().item()
            seen += labels.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate() got an empty loader: no batches to score")
    return correct / seen


def random_shift_flip(images: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """Light augmentation of a batch ``[B, C, H, W]``: random horizontal flip (p = 0.5) and a random
    translation by up to ``max_shift`` pixels (zero padding is the normalized background value)."""
    batch, _, height, width = images.shape
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    background = images.amin()
    padded = F.pad(images, (max_shift,) * 4, value=background.item())
    shifts = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator, device=images.device)
    rows = (shifts[0][:, None] + torch.arange(height, device=images.device))  # [B, H]
    cols = (shifts[1][:, None] + torch.arange(width, device=images.device))   # [B, W]
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    gathered = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return gathered.permute(0, 3, 1, 2).contiguous()


#: Default recipe per model: the exact settings used for the shipped checkpoints.
RECIPES = {
    "cnn": {"epochs": 12, "batch_size": 128, "optimizer": "AdamW", "max_lr": 4e-3, "weight_decay": 5e-4,
            "schedule": "OneCycleLR", "augment": "random_shift_flip(max_shift=2)"},
    "mlp": {"epochs": 5, "batch_size": 128, "optimizer": "AdamW", "max_lr": 3e-3, "weight_decay": 1e-4,
            "schedule": "OneCycleLR", "augment": None},
}
RECIPES["vit"] = {"epochs": 7, "batch_size": 128, "optimizer": "AdamW", "max_lr": 3e-3, "weight_decay": 5e-2,
                  "schedule": "OneCycleLR", "augment": None}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from lowbit.models import ARCHITECTURES

    parser = argparse.ArgumentParser(description="Train a lowbit course model and write its checkpoint.")
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="cnn")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["embedded", "full", "auto"], default="full")
    parser.add_argument("--out", type=Path, default=None, help="default: lowbit/checkpoints/<model>.pt")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = bit-reproducible)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _full_test_loader(batch_size: int) -> DataLoader | None:
    """The full 10,000-image test set when it is on disk, else ``None``."""
    from lowbit import data

    if data.find_full_dataset() is None:
        return None
    images, labels = data.load_fashion_mnist("test", "full")
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: train, evaluate on the full and embedded test sets, write ``.pt`` and ``.json``."""
    from lowbit import data, models

    args = _parse_args(argv)
    recipe = dict(RECIPES[args.model])
    recipe["epochs"] = args.epochs or recipe["epochs"]
    recipe["source"] = args.source
    out = args.out or models.CHECKPOINT_DIR / f"{args.model}.pt"
    torch.set_num_threads(args.threads)
    print(f"recipe for {args.model}: {json.dumps(recipe)} seed={args.seed} threads={args.threads}")

    generator = seed_everything(args.seed)
    model = models.ARCHITECTURES[args.model]()
    train_loader, _ = data.loaders(batch_size=recipe["batch_size"], source=args.source, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["max_lr"], weight_decay=recipe["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["max_lr"], epochs=recipe["epochs"],
                                                    steps_per_epoch=len(train_loader))
    augment = (lambda x: random_shift_flip(x, 2, generator)) if recipe["augment"] else None
    started = time.perf_counter()
    losses = train(model, train_loader, epochs=recipe["epochs"], optimizer=optimizer, scheduler=scheduler,
                   augment=augment, device="cpu", progress=not args.no_progress)
    seconds = time.perf_counter() - started

    _, embedded_test = data.loaders(batch_size=512, source="embedded")
    full_test = _full_test_loader(512)
    accuracy_full = evaluate(model, full_test, device="cpu") if full_test is not None else None
    accuracy_embedded = evaluate(model, embedded_test, device="cpu")
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    summary = {"model": args.model, "recipe": recipe, "seed": args.seed, "threads": args.threads,
               "torch_version": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
               "train_seconds": round(seconds, 1), "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
               "accuracy_full_test": accuracy_full, "accuracy_embedded_test": accuracy_embedded,
               "checkpoint_bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
