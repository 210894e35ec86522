"""lowbit.models.TinyViT: structure, the 38 named matrix products, multiply counts, the shipped checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit import data, models
from lowbit.train import evaluate

DIM, HEADS, HIDDEN, TOKENS = 64, 4, 128, 17
BLOCK_PRODUCTS = ("attn.qkv", "attn.qk", "attn.av", "attn.proj", "mlp.fc1", "mlp.fc2")
#: The shipped checkpoint must stay above this on the embedded 3,000-image test subset.
EMBEDDED_ACCURACY_BOUND = 0.88


def expected_names() -> list[str]:
    return ["patch_embed"] + [f"blocks.{i}.{p}" for i in range(6) for p in BLOCK_PRODUCTS] + ["head"]


@pytest.fixture(scope="module")
def vit() -> models.TinyViT:
    torch.manual_seed(0)
    return models.TinyViT().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return data.load_fashion_mnist("test", "embedded")[0][:6].clone()


# ---------------------------------------------------------------- structure
def test_shapes_parameters_and_module_types(vit):
    assert vit(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    named = dict(vit.named_modules())
    assert isinstance(named["patch_embed"], nn.Linear) and named["patch_embed"].in_features == 49
    assert vit.pos_embed.shape == (1, TOKENS, DIM) and vit.cls_token.shape == (1, 1, DIM)
    assert len(vit.blocks) == 6
    for i in range(6):
        assert named[f"blocks.{i}.attn.qkv"].out_features == 3 * DIM
        assert isinstance(named[f"blocks.{i}.attn.qk"], models.MatMul)
        assert isinstance(named[f"blocks.{i}.attn.av"], models.MatMul)
        assert isinstance(named[f"blocks.{i}.norm1"], nn.LayerNorm)
        assert isinstance(named[f"blocks.{i}.norm2"], nn.LayerNorm)
        assert named[f"blocks.{i}.mlp.fc1"].out_features == HIDDEN
    assert sum(p.numel() for p in vit.parameters()) == 205_962


def test_patches_are_7x7_tiles_in_row_major_order(vit):
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    patches = vit.patches(x)
    assert patches.shape == (2, 16, 49)
    for index in (0, 3, 5, 15):
        row, col = divmod(index, 4)
        tile = x[:, 0, 7 * row:7 * row + 7, 7 * col:7 * col + 7].reshape(2, 49)
        assert torch.equal(patches[:, index], tile)


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 3, 28, 28), (2, 1, 32, 32)])
def test_wrong_image_shape_is_refused(vit, shape):
    with pytest.raises(ValueError, match=r"expects images \[N, 1, 28, 28\]"):
        vit(torch.zeros(shape))


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="multiple of heads"):
        models.TinyViT(dim=30, heads=4)
    with pytest.raises(ValueError, match="must divide the image side"):
        models.TinyViT(patch=5)


def test_attention_matches_pytorch_scaled_dot_product_attention():
    torch.manual_seed(1)
    attention = models.ViTAttention(DIM, HEADS)
    x = torch.randn(3, TOKENS, DIM)
    q, k, v = attention.qkv(x).reshape(3, TOKENS, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
    reference = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, TOKENS, DIM)
    torch.testing.assert_close(attention(x), attention.proj(reference), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the 38 named products
def test_matmul_names_are_the_38_products_in_order(vit):
    assert models.matmul_names(vit) == expected_names()
    assert len(expected_names()) == 38


def test_matmul_names_is_the_execution_order(vit, images):
    seen: list[str] = []
    modules = dict(vit.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: seen.append(name))
               for name in models.matmul_names(vit)]
    try:
        vit(images)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == expected_names()


def test_matmul_names_refuses_a_model_without_products():
    with pytest.raises(ValueError, match="no nn.Linear or MatMul"):
        models.matmul_names(nn.Sequential(nn.ReLU()))


def test_matmul_modules_carry_the_attention_products(vit, images):
    record: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    modules = dict(vit.named_modules())

    def hook(name):
        return lambda module, inputs, output: record.__setitem__(name, (*inputs, output))

    handles = [modules[f"blocks.2.attn.{p}"].register_forward_hook(hook(p)) for p in ("qk", "av")]
    try:
        vit(images)
    finally:
        for handle in handles:
            handle.remove()
    q, k_t, scores = record["qk"]
    assert q.shape == (6, HEADS, TOKENS, 16) and k_t.shape == (6, HEADS, 16, TOKENS)
    assert scores.shape == (6, HEADS, TOKENS, TOKENS)
    probabilities, v, out = record["av"]
    assert probabilities.shape == (6, HEADS, TOKENS, TOKENS) and v.shape == (6, HEADS, TOKENS, 16)
    # the av product's left operand is the softmax of the qk product's scaled output, computed in float
    torch.testing.assert_close(probabilities, torch.softmax(scores * 16 ** -0.5, dim=-1))
    torch.testing.assert_close(out, probabilities @ v)


class _Zero(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*a.shape[:-1], b.shape[-1])


class _Wrapped(nn.Module):
    """What a quantized-module swap looks like: holds the original product and calls it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(a, b)


@pytest.mark.parametrize("product", ["qk", "av"])
def test_swapping_an_attention_matmul_changes_the_logits(product, images):
    model = models.pretrained("vit")
    with torch.no_grad():
        before = model(images)
        wrapper = _Wrapped(model.blocks[3].attn.get_submodule(product))
        setattr(model.blocks[3].attn, product, wrapper)
        assert torch.equal(model(images), before) and wrapper.calls == 1
        setattr(model.blocks[3].attn, product, _Zero())
        after = model(images)
    assert (after - before).abs().max() > 1e-3


# ---------------------------------------------------------------- multiply counts
def test_matmul_multiplies_per_product(vit):
    counts = models.matmul_multiplies(vit)
    d = DIM // HEADS
    per_block = {"attn.qkv": TOKENS * DIM * 3 * DIM, "attn.qk": HEADS * TOKENS * d * TOKENS,
                 "attn.av": HEADS * TOKENS * TOKENS * d, "attn.proj": TOKENS * DIM * DIM,
                 "mlp.fc1": TOKENS * DIM * HIDDEN, "mlp.fc2": TOKENS * HIDDEN * DIM}
    expected = {"patch_embed": 16 * 49 * DIM, **{f"blocks.{i}.{p}": per_block[p] for i in range(6) for p in per_block},
                "head": DIM * 10}
    assert list(counts) == expected_names()
    assert counts == expected
    assert sum(counts.values()) == 3_615_104


def test_matmul_multiplies_is_per_image_and_restores_the_mode():
    model = models.TinyViT().train()
    assert models.matmul_multiplies(model, (3, 1, 28, 28)) == models.matmul_multiplies(model)
    assert model.training


# ---------------------------------------------------------------- determinism, gradients
def test_forward_is_deterministic_and_per_sample(vit, images):
    with torch.no_grad():
        first, second = vit(images), vit(images)
        one_at_a_time = torch.cat([vit(images[i:i + 1]) for i in range(len(images))])
    assert torch.equal(first, second)
    torch.testing.assert_close(one_at_a_time, first, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient(images):
    torch.manual_seed(0)
    model = models.TinyViT()
    F.cross_entropy(model(images), torch.arange(6)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ---------------------------------------------------------------- the shipped checkpoint
def test_shipped_checkpoint_loads_with_weights_only_and_is_small():
    path = models.CHECKPOINT_DIR / "vit.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == set(models.TinyViT().state_dict())
    assert path.stat().st_size <= 1_000_000
    model = models.pretrained("vit")
    assert isinstance(model, models.TinyViT) and not model.training


def test_shipped_checkpoint_accuracy_matches_its_record():
    record = json.loads((models.CHECKPOINT_DIR / "vit.json").read_text())
    model = models.pretrained("vit")
    _, test_loader = data.loaders(batch_size=500)
    accuracy = evaluate(model, test_loader, device="cpu")
    assert accuracy >= EMBEDDED_ACCURACY_BOUND
    assert accuracy == pytest.approx(record["accuracy_embedded_test"], abs=0.005)
    assert record["accuracy_full_test"] >= 0.88
    assert record["recipe"]["source"] == "full" and record["model"] == "vit" and "seed" in record
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
