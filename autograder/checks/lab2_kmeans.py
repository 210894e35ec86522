"""Hidden checks for Lab 2 — k-means quantization.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function,
calls it with plain data, and compares what comes back with lowbit's reference (computed here, in the
grader's process). Every named check states what it tests, so that feedback names the mistake. Each check
also verifies that the inputs it passed are unchanged afterwards (the proxy detects in-place edits too).
"""
from __future__ import annotations

import torch

from autograder.checks._api import (CheckSuite, expect_close, expect_dtype, expect_equal, expect_length, expect_raises,
                                    expect_shape, expect_tensor, expect_unchanged)
from autograder.contract import load_contract
from lowbit.quant import kmeans as ref

#: Graded functions, their signatures and references: ``lab2_kmeans.contract.json``.
CONTRACT = load_contract("lab2_kmeans")

#: Centroids: float64 means cast to float32; the student's linear init is rounded to float32 first.
CENTROID_TOL = {"atol": 1e-7, "rtol": 1e-5}


def _size(d, n: int) -> int:
    """A drawn size near ``n`` (up to 20 % more): the checks' shapes are not fixed numbers either."""
    return n + d.integer(0, n // 5)


def _expect_codebook(suite: CheckSuite, fn, expected: tuple, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` returns the expected (centroids, labels): centroids within CENTROID_TOL, labels exact."""
    what, inputs = suite.label(*args, **kwargs)
    result = fn(*args, **kwargs)
    expect_length(result, 2, what, inputs=inputs)
    centroids, labels = result
    expect_close(centroids, expected[0], f"centroids of {what}", inputs=inputs, **CENTROID_TOL)
    expect_equal(labels, expected[1], f"labels of {what}", inputs=inputs)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid labels by an explicit distance matrix (ties: lowest index)."""
    return (x.reshape(-1, 1).double() - centroids.double().reshape(1, -1)).abs().argmin(dim=1)


# ----------------------------------------------------------------------------------------------- part 1
def check_linear_init(fn) -> None:
    suite = CheckSuite("linear_init", CONTRACT)
    d = suite.draw
    with suite.check("evenly spaced from min to max", hint="torch.linspace(w.min(), w.max(), k): both ends included"):
        for n, k, seed in ((100, 4, 0), (1000, 16, 1), (37, 7, 2), (500, 256, 3)):
            w = d.heavy_tailed(_size(d, n))
            expect_close(fn(w, k), ref.linear_init(w, k), f"linear_init(w, k={k})", atol=1e-8, rtol=1e-6,
                         inputs={"w": w})
    with suite.check("the first and last centroids are the min and the max"):
        w = d.heavy_tailed(_size(d, 300))
        got = fn(w, 8)
        expect_close(float(got[0]), float(w.min()), "linear_init(w, 8)[0]", atol=1e-8, rtol=1e-6)
        expect_close(float(got[-1]), float(w.max()), "linear_init(w, 8)[-1]", atol=1e-8, rtol=1e-6)
    with suite.check("any shape: the weights are flattened"):
        w = torch.randn(6, 3, 3, 3, generator=d.generator)
        expect_close(fn(w, 16), ref.linear_init(w, 16), "linear_init(w, k=16)", atol=1e-8, rtol=1e-6, inputs={"w": w})
    with suite.check("k = 1 gives the minimum"):
        w = torch.tensor([0.5, -2.0, 3.0])
        expect_close(fn(w, 1), torch.tensor([-2.0]), "linear_init([0.5, -2, 3], k=1)", atol=0)
    with suite.check("constant weights give k equal centroids (no NaN)"):
        w = torch.full((10,), 0.7)
        expect_close(fn(w, 4), torch.full((4,), 0.7), "linear_init(10 × 0.7, k=4)", atol=1e-7)
    with suite.check("k larger than the number of values"):
        w = torch.tensor([1.0, 3.0])
        expect_close(fn(w, 5), torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]), "linear_init([1, 3], k=5)", atol=1e-7)
    with suite.check("returns float32 [k]", hint="compute in float64, return .to(torch.float32)"):
        for dtype in (torch.float32, torch.float64, torch.float16):
            got = fn(torch.linspace(-1, 1, 11).to(dtype), 3)
            expect_dtype(got, torch.float32, f"linear_init of a {dtype} tensor")
            expect_shape(got, (3,), f"linear_init of a {dtype} tensor, k=3")
    with suite.check("float16 and bfloat16 inputs", hint="convert to float64 before linspace; do not build the grid in float16"):
        for dtype in (torch.float16, torch.bfloat16):
            w = d.heavy_tailed(_size(d, 200)).to(dtype)
            expect_close(fn(w, 16), ref.linear_init(w, 16), "linear_init(w, k=16)", atol=1e-8, rtol=1e-6,
                         inputs={"w": w})
    with suite.check("rejects bad input", hint="TypeError for integer tensors; ValueError for empty w or k < 1"):
        expect_raises(ValueError, fn, torch.zeros(0), 4, what="linear_init(empty tensor, 4)")
        expect_raises(ValueError, fn, torch.randn(5), 0, what="linear_init(w, k=0)")
        expect_raises(TypeError, fn, torch.arange(5), 2, what="linear_init(int64 tensor, 2)")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.heavy_tailed(_size(d, 64)), 4, what="linear_init")
    suite.finish()


def check_kmeans_1d(fn) -> None:
    suite = CheckSuite("kmeans_1d", CONTRACT)
    d = suite.draw

    def compare(w, k, **kwargs):
        _expect_codebook(suite, fn, ref.kmeans_1d(w, k, **kwargs), w, k, **kwargs)

    with suite.check("matches Lloyd's algorithm with linear init"):
        for n, k, seed in ((200, 2, 0), (1000, 4, 1), (2000, 8, 2), (3000, 16, 3)):
            compare(d.heavy_tailed(_size(d, n)), k)
    with suite.check("labels are the nearest centroid", hint="assign after the last update: labels must match the centroids you return"):
        for k, seed in ((4, 10), (16, 11), (32, 12)):
            w = d.heavy_tailed(_size(d, 1500))
            for iters in (1, 3, 100):
                result = fn(w, k, iters=iters)
                expect_length(result, 2, f"kmeans_1d(w, k={k}, iters={iters})", inputs={"w": w})
                centroids, labels = result
                expect_equal(labels, _nearest(w, centroids),
                             f"labels of kmeans_1d(w, k={k}, iters={iters}) vs nearest centroid", inputs={"w": w})
    with suite.check("ties go to the lower index", hint="a value exactly on a midpoint joins the lower cluster (torch.bucketize, right=False)"):
        w = torch.tensor([0.0, 1.0, 2.0])
        centroids, labels = fn(w, 2)
        expect_close(centroids, torch.tensor([0.5, 2.0]), "centroids of kmeans_1d([0, 1, 2], k=2)", atol=1e-7)
        expect_equal(labels, torch.tensor([0, 0, 1]), "labels of kmeans_1d([0, 1, 2], k=2)")
    with suite.check("empty clusters keep their centroid (no NaN)", hint="torch.where(counts > 0, sums / counts, old centroids)"):
        w = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0, 5.0])
        centroids, _ = fn(w, 3)
        expect_close(centroids, torch.tensor([0.44, 2.5, 5.0]), "centroids of kmeans_1d([0, .1, .2, .9, 1, 5], k=3)", atol=1e-6)
        w = d.heavy_tailed(_size(d, 2000))
        centroids, _ = fn(w, 64)
        assert bool(torch.isfinite(centroids).all()), f"kmeans_1d(w, 64) returned non-finite centroids: {centroids}"
        compare(w, 64)
    with suite.check("iters counts centroid updates; it stops when the labels stop changing",
                     hint="iters=0: the init and its assignment; each iteration: update, re-assign, stop if unchanged"):
        w = d.heavy_tailed(_size(d, 1000))
        for iters in (0, 1, 2, 5):
            compare(w, 16, iters=iters)
        compare(w, 16, iters=1000)
    with suite.check("more centroids than distinct values"):
        w = torch.tensor([0.0, 0.0, 0.3, 0.3, 1.0, 0.3])
        compare(w, 8)
        compare(torch.tensor([4.0]), 3)
    with suite.check("constant weights"):
        centroids, labels = fn(torch.full((10,), -0.3), 4)
        expect_close(centroids, torch.full((4,), -0.3), "centroids of kmeans_1d(10 × -0.3, k=4)", atol=1e-7)
        expect_equal(labels, torch.zeros(10, dtype=torch.int64), "labels of kmeans_1d(10 × -0.3, k=4)")
    with suite.check("random and kmeans++ inits", hint="init != 'linear': start from initial_centroids(w, k, init, seed)"):
        w = d.heavy_tailed(_size(d, 800))
        for init in ("random", "kmeans++"):
            for seed in (0, 3):
                compare(w, 8, init=init, seed=seed)
    with suite.check("any shape: labels index the flattened weights"):
        w = torch.randn(8, 4, 3, 3, generator=d.generator) * 0.1
        compare(w, 8)
    with suite.check("float16 and bfloat16 inputs", hint="work in float64: w.reshape(-1).to(torch.float64)"):
        for dtype in (torch.float16, torch.bfloat16):
            compare(d.heavy_tailed(_size(d, 700)).to(dtype), 8)
    with suite.check("returns float32 centroids [k] and int64 labels [n]"):
        centroids, labels = fn(torch.randn(3, 5, generator=d.generator).double(), 4)
        expect_dtype(centroids, torch.float32, "centroids")
        expect_shape(centroids, (4,), "centroids")
        expect_dtype(labels, torch.int64, "labels")
        expect_shape(labels, (15,), "labels of a [3, 5] weight")
    with suite.check("rejects bad input"):
        w = torch.randn(20, generator=d.generator)
        expect_raises(ValueError, fn, w, 4, init="kmeans", what="kmeans_1d(w, 4, init='kmeans')")
        expect_raises(ValueError, fn, w, 4, iters=-1, what="kmeans_1d(w, 4, iters=-1)")
        expect_raises(ValueError, fn, w, 0, what="kmeans_1d(w, k=0)")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.heavy_tailed(300).reshape(30, 10), 8, what="kmeans_1d")
    suite.finish()


def check_kmeans_quantize(fn) -> None:
    suite = CheckSuite("kmeans_quantize", CONTRACT)
    d = suite.draw

    def compare(w, bits, **kwargs):
        _expect_codebook(suite, fn, ref.kmeans_quantize(w, bits, method="lloyd", **kwargs), w, bits, **kwargs)

    with suite.check("k = 2^bits centroids", hint="bits=b means 2**b shared values, not 2**b - 1 and not b"):
        w = d.heavy_tailed(_size(d, 1500))
        for bits in (1, 2, 3, 4, 5):
            compare(w, bits)
    with suite.check("returns a Codebook(centroids, labels)", hint="return Codebook(centroids, labels)"):
        codebook = fn(torch.randn(4, 6, generator=d.generator), 2)
        assert hasattr(codebook, "centroids") and hasattr(codebook, "labels"), \
            f"expected a Codebook with fields centroids and labels, got {type(codebook).__name__}"
        expect_dtype(codebook.centroids, torch.float32, "codebook.centroids")
        expect_shape(codebook.centroids, (4,), "codebook.centroids for bits=2")
        expect_dtype(codebook.labels, torch.int64, "codebook.labels")
        expect_shape(codebook.labels, (24,), "codebook.labels of a [4, 6] weight")
    with suite.check("passes iters and init on to kmeans_1d"):
        w = d.heavy_tailed(_size(d, 1000))
        compare(w, 4, iters=1)
        compare(w, 4, iters=0)
        compare(w, 3, init="kmeans++")
    with suite.check("conv weights and float16 inputs"):
        compare(torch.randn(8, 4, 3, 3, generator=d.generator) * 0.05, 4)
        compare(d.heavy_tailed(_size(d, 500)).half(), 3)
    with suite.check("rejects bits out of range", hint="ValueError unless bits is an int in 1..16"):
        w = torch.randn(10, generator=d.generator)
        for bad in (0, 17, -1):
            expect_raises(ValueError, fn, w, bad, what=f"kmeans_quantize(w, bits={bad})")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.heavy_tailed(_size(d, 200)), 3, what="kmeans_quantize")
    suite.finish()


def check_decode(fn) -> None:
    suite = CheckSuite("decode", CONTRACT)
    d = suite.draw
    g = d.generator
    k = d.choice([4, 8, 16])
    centroids = torch.sort(torch.randn(k, generator=g)).values
    labels = torch.randint(0, k, (4 * 3 * 3 * 3,), generator=g)

    def compare(codebook, shape, expected):
        what, inputs = suite.label(codebook, shape)
        expect_close(fn(codebook, shape), expected, what, atol=0, inputs=inputs)

    with suite.check("looks up the centroids", hint="centroids[labels]"):
        compare(ref.Codebook(centroids, labels), (108,), centroids[labels])
    with suite.check("returns the requested shape", hint="reshape the looked-up values to shape"):
        codebook = ref.Codebook(centroids, labels)
        compare(codebook, (4, 3, 3, 3), ref.decode(codebook, (4, 3, 3, 3)))
        what, inputs = suite.label(ref.Codebook(centroids, labels), torch.Size([12, 9]))
        expect_shape(fn(ref.Codebook(centroids, labels), torch.Size([12, 9])), (12, 9), what, inputs=inputs)
    with suite.check("accepts a plain (centroids, labels) pair and unsorted centroids"):
        unsorted = torch.tensor([0.3, -1.0, 2.0])
        compare((unsorted, torch.tensor([0, 1, 2, 2])), (2, 2), torch.tensor([[0.3, -1.0], [2.0, 2.0]]))
    with suite.check("keeps the centroids' dtype"):
        for dtype in (torch.float64, torch.float16):
            codebook = ref.Codebook(centroids.to(dtype), labels)
            what, inputs = suite.label(codebook, (108,))
            expect_dtype(fn(codebook, (108,)), dtype, what, inputs=inputs)
    with suite.check("rejects a shape that does not match the labels", hint="raise ValueError naming both sizes"):
        for shape in ((100,), (4, 3, 3, 4)):
            what, _ = suite.label(ref.Codebook(centroids, labels), shape)
            expect_raises(ValueError, fn, ref.Codebook(centroids, labels), shape,
                          what=f"{what} with {labels.numel()} labels")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, ref.Codebook(centroids, labels), (4, 27), what="decode")
    suite.finish()


def check_compressed_bits(fn) -> None:
    suite = CheckSuite("compressed_bits", CONTRACT)
    d = suite.draw

    def compare(*args):
        what, _ = suite.label(*args)
        expect_equal(fn(*args), ref.compressed_bits(*args), what)

    with suite.check("index bits plus codebook bits"):
        for bits in (4, 3, 2, 8, 1):
            compare(d.integer(1, 40000), bits)
        compare(1, 1)
        compare(0, d.integer(1, 8))
    with suite.check("counts the codebook: 2^bits centroids", hint="the codebook stores 2**bits values of codebook_bits each"):
        numel = d.integer(1, 30)
        expect_equal(fn(numel, 8), numel * 8 + 256 * 32, f"compressed_bits(numel={numel}, bits=8)")
        bits = d.integer(2, 6)
        expect_equal(fn(0, bits), 2**bits * 32,
                     f"compressed_bits(numel=0, bits={bits}): an empty tensor still has its codebook")
    with suite.check("codebook_bits is used"):
        for codebook_bits in (16, 8, 0):
            compare(d.integer(100, 5000), d.integer(2, 6), codebook_bits)
    with suite.check("returns a Python int"):
        numel = d.integer(1, 1000)
        got = fn(numel, 3)
        assert type(got) is int, \
            f"compressed_bits(numel={numel}, bits=3) returned {type(got).__name__} {got!r}: expected a Python int"
    with suite.check("rejects bad input", hint="ValueError for numel < 0, codebook_bits < 0 or bits outside 1..16"):
        numel = d.integer(10, 1000)
        expect_raises(ValueError, fn, -d.integer(1, 100), 4, what="compressed_bits(numel < 0, bits=4)")
        expect_raises(ValueError, fn, numel, 0, what=f"compressed_bits(numel={numel}, bits=0)")
        expect_raises(ValueError, fn, numel, 17, what=f"compressed_bits(numel={numel}, bits=17)")
        expect_raises(ValueError, fn, numel, 4, -d.integer(1, 16),
                      what=f"compressed_bits(numel={numel}, bits=4, codebook_bits < 0)")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3
def check_centroid_gradients(fn) -> None:
    suite = CheckSuite("centroid_gradients", CONTRACT)
    d = suite.draw
    g = d.generator
    n = _size(d, 2000)
    grad = torch.randn(n, generator=g)
    labels = torch.randint(0, 16, (n,), generator=g)

    def compare(grad_w, labels, k, expected, **tolerance):
        what, inputs = suite.label(grad_w, labels, k)
        expect_close(fn(grad_w, labels, k), expected, what, inputs=inputs, **tolerance)

    with suite.check("sums the gradients of each cluster",
                     hint="dL/dc_j is the SUM (not the mean) of dL/dw_i over members"):
        compare(grad, labels, 16, ref.centroid_gradients(grad, labels, 16), atol=1e-5, rtol=1e-5)
        compare(torch.ones(6), torch.tensor([0, 0, 0, 1, 1, 2]), 3, torch.tensor([3.0, 2.0, 1.0]), atol=1e-7)
    with suite.check("clusters with no member get 0", hint="the result always has k entries (minlength=k)"):
        compare(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), 5, torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0]), atol=1e-7)
    with suite.check("any shape of grad_w: labels index its flattened values"):
        conv_grad = torch.randn(8, 4, 3, 3, generator=g)
        conv_labels = torch.randint(0, 8, (conv_grad.numel(),), generator=g)
        compare(conv_grad, conv_labels, 8, ref.centroid_gradients(conv_grad, conv_labels, 8), atol=1e-5, rtol=1e-5)
    with suite.check("keeps grad_w's dtype"):
        what, inputs = suite.label(grad.double(), labels, 16)
        expect_dtype(fn(grad.double(), labels, 16), torch.float64, what, inputs=inputs)
        small = grad[:64].half()
        what, inputs = suite.label(small, labels[:64], 16)
        got = fn(small, labels[:64], 16)
        expect_dtype(got, torch.float16, what, inputs=inputs)
        expect_close(got, ref.centroid_gradients(small.double(), labels[:64], 16), f"float16 sums of {what}",
                     atol=2e-2, rtol=1e-2, inputs=inputs)
    with suite.check("rejects labels of the wrong length", hint="ValueError when labels.numel() != grad_w.numel()"):
        short = d.integer(10, n // 2)
        expect_raises(ValueError, fn, grad, labels[:short], 16,
                      what=f"centroid_gradients(grad_w with {n} values, labels with {short}, k=16)")
    with suite.check("leaves its inputs unchanged"):
        fresh_grad = torch.randn(300, generator=d.generator)
        fresh_labels = torch.randint(0, 8, (300,), generator=d.generator)
        expect_unchanged(fn, fresh_grad, fresh_labels, 8, what="centroid_gradients")
    suite.finish()


def check_update_centroids_mean(fn) -> None:
    suite = CheckSuite("update_centroids_mean", CONTRACT)
    d = suite.draw
    g = d.generator
    w = d.heavy_tailed(_size(d, 1500))
    old = torch.sort(torch.randn(32, generator=g) * 0.2).values
    labels = ref.assign(w, old)

    def compare(w, labels, k, old_centroids, expected, **tolerance):
        what, inputs = suite.label(w, labels, k, old_centroids)
        expect_close(fn(w, labels, k, old_centroids), expected, what, inputs=inputs, **tolerance)

    with suite.check("means of each cluster", hint="sum of the members / number of members"):
        compare(w, labels, 32, old, ref.update_centroids_mean(w, labels, 32, old), atol=1e-7, rtol=1e-6)
        compare(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0, 0, 1]), 2, torch.zeros(2), torch.tensor([1.5, 6.0]),
                atol=1e-7)
    with suite.check("empty clusters keep their old centroid",
                     hint="torch.where(counts > 0, sums / counts.clamp_min(1), old)"):
        compare(torch.tensor([1.0, 3.0]), torch.tensor([1, 1]), 4, torch.tensor([-1.0, 0.0, 5.0, 9.0]),
                torch.tensor([-1.0, 2.0, 5.0, 9.0]), atol=1e-7)
        what, inputs = suite.label(w, labels, 32, old)
        got = fn(w, labels, 32, old)
        expect_tensor(got, what)
        assert bool(torch.isfinite(got).all()), f"{what} returned NaN or inf where a cluster is empty"
    with suite.check("any shape of w: labels index its flattened values"):
        conv = torch.randn(8, 4, 3, 3, generator=g)
        conv_old = torch.linspace(-2, 2, 8)
        conv_labels = ref.assign(conv, conv_old)
        compare(conv, conv_labels, 8, conv_old, ref.update_centroids_mean(conv, conv_labels, 8, conv_old),
                atol=1e-7, rtol=1e-6)
    with suite.check("keeps old_centroids' dtype"):
        for w_dtype, old_dtype, expected in ((torch.float32, torch.float64, torch.float64),
                                             (torch.float64, torch.float32, torch.float32)):
            what, inputs = suite.label(w.to(w_dtype), labels, 32, old.to(old_dtype))
            expect_dtype(fn(w.to(w_dtype), labels, 32, old.to(old_dtype)), expected, what, inputs=inputs)
    with suite.check("accumulates in float64", hint="float16 sums of thousands of values lose their precision"):
        many = (torch.full((6000,), 0.1) + torch.rand(6000, generator=g) * 1e-3).half()
        members = torch.zeros(6000, dtype=torch.int64)
        compare(many, members, 1, torch.zeros(1), ref.update_centroids_mean(many, members, 1, torch.zeros(1)),
                atol=1e-6, rtol=1e-5)
    with suite.check("rejects inconsistent sizes"):
        short = d.integer(5, 50)
        expect_raises(ValueError, fn, w, labels[:short], 32, old,
                      what=f"update_centroids_mean(w with {w.numel()} values, labels with {short}, k=32, "
                           "old_centroids)")
        expect_raises(ValueError, fn, w, labels, 32, old[:16],
                      what="update_centroids_mean(w, labels, k=32, old_centroids with 16 values)")
    with suite.check("leaves its inputs unchanged"):
        fresh_w = d.heavy_tailed(_size(d, 400))
        fresh_old = torch.linspace(-0.5, 0.5, 8)
        fresh_labels = ref.assign(fresh_w, fresh_old)
        expect_unchanged(fn, fresh_w, fresh_labels, 8, fresh_old, what="update_centroids_mean")
    suite.finish()


__all__ = [name for name in dir() if name.startswith("check_")] + ["CONTRACT"]
