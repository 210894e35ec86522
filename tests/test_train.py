"""lowbit.train: the training loop, evaluation, augmentation and the checkpoint CLI (on tiny settings)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowbit import data, models
from lowbit.train import evaluate, main, random_shift_flip, train


def small_loader(n: int = 640, batch_size: int = 32, seed: int = 0) -> DataLoader:
    images, labels = data.calibration_batch(n, seed=seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def test_training_tiny_mlp_lowers_the_loss():
    torch.manual_seed(0)
    model = models.TinyMLP()
    losses = train(model, small_loader(), epochs=2, lr=3e-3, device="cpu", progress=False)
    assert len(losses) == 2 * 20 and all(isinstance(v, float) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert model.training


def test_train_honours_the_given_optimizer_and_max_batches():
    torch.manual_seed(0)
    model = models.TinyMLP()
    before = [p.clone() for p in model.parameters()]
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    losses = train(model, small_loader(), epochs=3, optimizer=frozen, device="cpu", progress=False,
                   max_batches=4)
    assert len(losses) == 12
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_steps_a_scheduler_per_batch():
    model = models.TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train(model, small_loader(), optimizer=optimizer, scheduler=scheduler, device="cpu", progress=False,
          max_batches=3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125)


@pytest.mark.parametrize("kwargs, message", [({"epochs": 0}, "epochs"), ({"max_batches": 0}, "max_batches")])
def test_train_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(models.TinyMLP(), small_loader(), progress=False, device="cpu", **kwargs)


class ConstantClassifier(nn.Module):
    """Always predicts ``label`` (and has one parameter so ``.to`` works)."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, self.label] = 1.0
        return logits


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_is_a_fraction_and_restores_mode(training):
    _, test_loader = data.loaders(batch_size=700)
    model = ConstantClassifier(label=3).train(training)
    assert evaluate(model, test_loader, device="cpu") == pytest.approx(0.1)  # 300 of 3000 are class 3
    assert model.training is training
    first_batch_labels = next(iter(test_loader))[1]
    expected = (first_batch_labels == 3).float().mean().item()
    assert evaluate(model, test_loader, device="cpu", max_batches=1) == pytest.approx(expected)


def test_evaluate_empty_loader_is_an_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ValueError, match="empty"):
        evaluate(models.TinyMLP(), empty, device="cpu")


def test_random_shift_flip_without_shift_only_flips():
    images = torch.randn(64, 1, 28, 28)
    out = random_shift_flip(images, max_shift=0, generator=torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64


def test_random_shift_flip_shifts_within_bounds():
    images = torch.full((32, 1, 28, 28), -1.0)
    images[:, :, 14, 14] = 5.0  # one bright pixel in the middle
    out = random_shift_flip(images, max_shift=2, generator=torch.Generator().manual_seed(1))
    positions = (out[:, 0] == 5.0).nonzero()[:, 1:]
    assert len(positions) == 32  # the pixel survives exactly once per image
    assert ((positions[:, 0] - 14).abs() <= 2).all()
    # column 14 stays 14, or becomes 28 - 1 - 14 = 13 when the image is flipped; then shifted by ≤ 2
    column_offset = torch.minimum((positions[:, 1] - 14).abs(), (positions[:, 1] - 13).abs())
    assert (column_offset <= 2).all()
    assert len({tuple(p) for p in positions.tolist()}) > 1
    assert (out[out != 5.0] == -1.0).all()  # the padding is the background value


def test_cli_writes_checkpoint_and_record_deterministically(tmp_path, capsys):
    args = ["--model", "mlp", "--epochs", "1", "--source", "embedded", "--seed", "3", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.pt")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.pt")]) == 0
    assert "recipe for mlp" in capsys.readouterr().out
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["seed"] == 3 and record["recipe"]["epochs"] == 1 and record["parameters"] == 50_890
    assert record["torch_version"] == torch.__version__ and 0.5 < record["accuracy_embedded_test"] <= 1.0
    first, second = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_train_hooks_extra_loss_before_and_after_step_and_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    running_mean = model[2].running_mean.clone()
    plain = train(model, small_loader(), lr=0.0, device="cpu", progress=False, max_batches=3, mode="eval",
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    assert torch.equal(model[2].running_mean, running_mean) and not model.training, "eval mode: BN frozen"
    calls = []
    penalised = train(model, small_loader(), device="cpu", progress=False, max_batches=3, mode="eval",
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                      extra_loss=lambda m: 2.0 * torch.ones(()),
                      before_step=lambda m: calls.append(("before", m[1].weight.grad is not None)),
                      after_step=[lambda m, step, loss: calls.append(("after", step, round(loss, 4)))])
    assert penalised == pytest.approx([loss + 2.0 for loss in plain]), "extra terms are added to the loss"
    assert calls[:2] == [("before", True), ("after", 0, round(penalised[0], 4))], "before: gradients exist"
    assert len(calls) == 6
    with pytest.raises(ValueError, match="mode"):
        train(model, small_loader(), device="cpu", progress=False, mode="frozen")
