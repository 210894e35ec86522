"""Realistic wrong answers for Lab 2, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the
grader must take the cell's points away and name ``check`` in the feedback.
"""
from __future__ import annotations

from autograder.mutants import Mutant

_LINSPACE = "torch.linspace(x.min().item(), x.max().item(), k, dtype=torch.float64)"
_KM_X = "x = w.detach().reshape(-1).to(torch.float64)"
_KM_MEAN = "centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)"
_CG = "torch.zeros(k, dtype=grad_w.dtype).index_add_(0, labels.reshape(-1), grad_w.detach().reshape(-1))"
_UM_WHERE = "torch.where(counts > 0, sums / counts.clamp_min(1), old_centroids.detach().to(torch.float64))"

MUTANTS = [
    # linear_init
    Mutant("linear_init", "max left out (k + 1 points, last dropped)", _LINSPACE,
           "torch.linspace(x.min().item(), x.max().item(), k + 1, dtype=torch.float64)[:k]", "evenly spaced from min to max"),
    Mutant("linear_init", "symmetric range ±max|w|", _LINSPACE,
           "torch.linspace(-x.abs().max().item(), x.abs().max().item(), k, dtype=torch.float64)", "evenly spaced from min to max"),
    Mutant("linear_init", "returns float64", ".to(torch.float32)\n", "\n", "returns float32 [k]"),
    Mutant("linear_init", "grid built in the input dtype", _LINSPACE,
           "torch.linspace(x.min().item(), x.max().item(), k, dtype=w.dtype)", "float16 and bfloat16 inputs"),
    Mutant("linear_init", "step (max - min) / k instead of / (k - 1)", _LINSPACE,
           "x.min() + torch.arange(k, dtype=torch.float64) * (x.max() - x.min()) / k", "evenly spaced from min to max"),
    Mutant("linear_init", "no validation of k", "or k < 1:", "or k < 0:", "rejects bad input"),
    # kmeans_1d
    Mutant("kmeans_1d", "NaN on an empty cluster", _KM_MEAN, "centroids = sums / counts", "empty clusters keep their centroid (no NaN)"),
    Mutant("kmeans_1d", "empty cluster reset to 0", _KM_MEAN,
           "centroids = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(centroids))",
           "empty clusters keep their centroid (no NaN)"),
    Mutant("kmeans_1d", "ties go to the upper cluster", "    labels = torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2)\n",
           "    labels = torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2, right=True)\n", "ties go to the lower index"),
    Mutant("kmeans_1d", "labels not updated in the loop (stale labels)", "        labels = new_labels", "        pass",
           "labels are the nearest centroid"),
    Mutant("kmeans_1d", "ignores iters", "for _ in range(iters):", "for _ in range(100):",
           "iters counts centroid updates; it stops when the labels stop changing"),
    Mutant("kmeans_1d", "stops after the first update", "if torch.equal(new_labels, labels):", "if True:",
           "matches Lloyd's algorithm with linear init"),
    Mutant("kmeans_1d", "ignores init (always linear)", 'start = linear_init(w, k) if init == "linear" else initial_centroids(w, k, init, seed)',
           "start = linear_init(w, k)", "random and kmeans++ inits"),
    Mutant("kmeans_1d", "sorts the weights in place", _KM_X,
           "x = w.detach().reshape(-1)\n    x.copy_(torch.sort(x).values)\n    x = x.to(torch.float64)", "leaves its input unchanged"),
    Mutant("kmeans_1d", "float32 centroids returned as float64", "return centroids.to(torch.float32), labels",
           "return centroids, labels", "returns float32 centroids [k] and int64 labels [n]"),
    # kmeans_quantize
    Mutant("kmeans_quantize", "2^b - 1 clusters", "kmeans_1d(w, 2**bits,", "kmeans_1d(w, 2**bits - 1,", "k = 2^bits centroids"),
    Mutant("kmeans_quantize", "b clusters instead of 2^b", "kmeans_1d(w, 2**bits,", "kmeans_1d(w, bits,", "k = 2^bits centroids"),
    Mutant("kmeans_quantize", "returns a plain tuple", "return Codebook(centroids, labels)", "return centroids, labels",
           "returns a Codebook(centroids, labels)"),
    Mutant("kmeans_quantize", "centroids and labels swapped", "return Codebook(centroids, labels)", "return Codebook(labels, centroids)",
           "returns a Codebook(centroids, labels)"),
    Mutant("kmeans_quantize", "ignores iters and init", "iters=iters, init=init", "", "passes iters and init on to kmeans_1d"),
    Mutant("kmeans_quantize", "no validation of bits", "not 1 <= bits <= 16", "False", "rejects bits out of range"),
    # decode
    Mutant("decode", "no reshape", ".reshape(tuple(shape))", "", "returns the requested shape"),
    Mutant("decode", "returns the indices", "centroids[labels.reshape(-1)]", "labels.reshape(-1).to(centroids.dtype)", "looks up the centroids"),
    Mutant("decode", "1-based labels", "centroids[labels.reshape(-1)]", "centroids[labels.reshape(-1) - 1]", "looks up the centroids"),
    Mutant("decode", "always float32", ".reshape(tuple(shape))", ".reshape(tuple(shape)).float()", "keeps the centroids' dtype"),
    Mutant("decode", "no size check (reshape error instead of ValueError)", "if math.prod(shape) != labels.numel():", "if False:",
           "rejects a shape that does not match the labels"),
    # compressed_bits
    Mutant("compressed_bits", "codebook forgotten", "return numel * bits + 2**bits * codebook_bits", "return numel * bits",
           "counts the codebook: 2^bits centroids"),
    Mutant("compressed_bits", "codebook of b entries", "2**bits * codebook_bits", "bits * codebook_bits", "counts the codebook: 2^bits centroids"),
    Mutant("compressed_bits", "2^b - 1 codebook entries", "2**bits * codebook_bits", "(2**bits - 1) * codebook_bits",
           "index bits plus codebook bits"),
    Mutant("compressed_bits", "ignores codebook_bits", "2**bits * codebook_bits", "2**bits * 32", "codebook_bits is used"),
    Mutant("compressed_bits", "bytes instead of bits", "return numel * bits + 2**bits * codebook_bits",
           "return (numel * bits + 2**bits * codebook_bits) // 8", "index bits plus codebook bits"),
    Mutant("compressed_bits", "float result", "return numel * bits + 2**bits * codebook_bits",
           "return numel * bits + 2.0**bits * codebook_bits", "returns a Python int"),
    Mutant("compressed_bits", "no validation of bits", "not 1 <= bits <= 16", "False", "rejects bad input"),
    # centroid_gradients
    Mutant("centroid_gradients", "mean instead of sum", f"return {_CG}",
           f"return {_CG} / torch.bincount(labels.reshape(-1), minlength=k).clamp_min(1).to(grad_w.dtype)",
           "sums the gradients of each cluster"),
    Mutant("centroid_gradients", "bincount without minlength", f"return {_CG}",
           "return torch.bincount(labels.reshape(-1), weights=grad_w.detach().reshape(-1).double()).to(grad_w.dtype)",
           "clusters with no member get 0"),
    Mutant("centroid_gradients", "always float32", _CG,
           "torch.zeros(k).index_add_(0, labels.reshape(-1), grad_w.detach().reshape(-1).float())", "keeps grad_w's dtype"),
    Mutant("centroid_gradients", "scatter (overwrite) instead of scatter-add", "index_add_(", "index_copy_(",
           "sums the gradients of each cluster"),
    Mutant("centroid_gradients", "grad_w not flattened", "grad_w.detach().reshape(-1))", "grad_w.detach())",
           "any shape of grad_w: labels index its flattened values"),
    Mutant("centroid_gradients", "clears grad_w after reading it", f"    return {_CG}",
           f"    result = {_CG}\n    grad_w.detach().zero_()\n    return result", "leaves its inputs unchanged"),
    Mutant("centroid_gradients", "no length check", "if labels.numel() != grad_w.numel():", "if False:",
           "rejects labels of the wrong length"),
    # update_centroids_mean
    Mutant("update_centroids_mean", "NaN on an empty cluster", _UM_WHERE, "sums / counts", "empty clusters keep their old centroid"),
    Mutant("update_centroids_mean", "empty cluster reset to 0", "old_centroids.detach().to(torch.float64))",
           "torch.zeros(k, dtype=torch.float64))", "empty clusters keep their old centroid"),
    Mutant("update_centroids_mean", "sum instead of mean", "sums / counts.clamp_min(1)", "sums", "means of each cluster"),
    Mutant("update_centroids_mean", "returns float64", "return means.to(old_centroids.dtype)", "return means", "keeps old_centroids' dtype"),
    Mutant("update_centroids_mean", "accumulates in the input dtype",
           "torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w.detach().reshape(-1).to(torch.float64))",
           "torch.zeros(k, dtype=w.dtype).index_add_(0, labels, w.detach().reshape(-1)).to(torch.float64)", "accumulates in float64"),
    Mutant("update_centroids_mean", "bincount without minlength", "torch.bincount(labels, minlength=k)", "torch.bincount(labels)",
           "empty clusters keep their old centroid"),
    Mutant("update_centroids_mean", "updates old_centroids in place", "    return means.to(old_centroids.dtype)",
           "    old_centroids.copy_(means)\n    return old_centroids", "leaves its inputs unchanged"),
]
