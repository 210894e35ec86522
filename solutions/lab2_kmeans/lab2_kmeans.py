# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] nbgrader={"grade": false, "grade_id": "title", "locked": true, "schema_version": 3, "solution": false, "task": false}
# # Lab 2 — K-means quantization: shared weights and trainable codebooks
#
# Linear quantization (Lab 1) puts its levels on an evenly spaced grid. Trained weights are not spread
# evenly: most sit near zero, a few are large. In this lab the levels go **where the weights are** — a small
# codebook of shared values found by k-means — and you then train the codebook itself.
#
# **You will be able to**
# 1. explain weight sharing and count its storage: $n \cdot b$ index bits plus a $2^b$-entry codebook;
# 2. implement 1-D k-means (Lloyd's algorithm) vectorized in PyTorch, with a deterministic init and empty-cluster rule;
# 3. compress the whole course CNN with codebooks at 8, 4, 3 and 2 bits, read the accuracy/size table, and see
#    why the first layer is kept in higher precision;
# 4. derive the gradient of the loss with respect to a shared value and fine-tune codebooks with it;
# 5. judge when Lloyd's algorithm is far from the optimal clustering, and compare k-means with linear quantization.
#
# **Prerequisites**: Lab 1 (linear quantization); PyTorch tensors, `index_add_` / `bincount`; backpropagation.
# **Time**: 2–3 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. Weight sharing and k-means | `linear_init`, `kmeans_1d`, `kmeans_quantize`, `decode`, `compressed_bits` | 56 |
# | 2. The whole CNN | — (experiment with your functions) | — |
# | 3. Fine-tuning the codebook | `centroid_gradients`, `update_centroids_mean` | 30 |
# | 4. Beyond Lloyd | — (experiment; one optional, ungraded exercise) | — |
# | 5. Wrap-up | three reflection questions (graded by hand) | 14 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what
# went in, what was expected and what came back. Hidden checks run at grading time on more cases (empty
# clusters, constant weights, more centroids than distinct values, float16 inputs, other shapes); they only
# call the functions you write, so keep the names and argument orders. Grading runs the setup cell and your
# answer cells only — a function must not depend on a variable computed in an experiment cell. Before
# submitting run `autograder check lab2_kmeans.ipynb`. Every widget and experiment below uses **your** functions.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import copy
import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.quant.kmeans import Codebook, finetune_codebooks, initial_centroids, kmeans_1d_optimal, sse
from lowbit.testing import assert_close, assert_dtype, assert_equal_int, assert_not_modified, assert_shape

torch.set_num_threads(1)  # the course machine is shared: one thread is faster than two busy ones
lowbit.seed_everything(0)
model = lowbit.models.pretrained("cnn")  # FashionCNN, fp32, eval mode
_, test_loader = lowbit.data.loaders(batch_size=500)
# While a grader runs this notebook, experiments use fewer batches (same code, smaller numbers).
EVAL_BATCHES = 1 if lowbit.GRADING else None
FINETUNE_BATCHES = 2 if lowbit.GRADING else None
fp32_accuracy = lowbit.train.evaluate(model, test_loader, max_batches=EVAL_BATCHES)
print(f"FashionCNN: {sum(p.numel() for p in model.parameters()):,} parameters, "
      f"FP32 accuracy on the embedded test set: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — Weight sharing
#
# Han, Mao & Dally (2016, *Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
# Quantization and Huffman Coding*) replace the $n$ weights of a layer by $k = 2^b$ **shared values**
# $c_1 < \dots < c_k$ (the *codebook*, or centroids) and store, per weight, only the $b$-bit **index**
# $\ell_i$ of its centroid. Reading a weight back is a table lookup, $\hat w_i = c_{\ell_i}$. Storage:
#
# $$ \underbrace{n \cdot b}_{\text{indices}} \;+\; \underbrace{k \cdot 32}_{\text{fp32 codebook}} \quad\text{bits, instead of}\quad 32\,n . $$
#
# The codebook is not free: for a small tensor at 8 bits (256 centroids = 8192 bits) it can cost more than
# the indices. Choosing the centroids is **1-D k-means**: minimize the sum of squared errors
#
# $$ \mathrm{SSE} = \sum_{i=1}^{n} \big(w_i - c_{\ell_i}\big)^2 , \qquad \ell_i = \arg\min_j |w_i - c_j| . $$
#
# **Lloyd's algorithm** (Lloyd, 1982, *Least squares quantization in PCM*) alternates two steps that each
# lower the SSE: *assign* every weight to its nearest centroid, then *update* every centroid to the mean of
# its members — until no assignment changes. In 1-D with sorted centroids the assignment is a binary search:
# the boundaries between clusters are the midpoints $(c_j + c_{j+1})/2$ (`torch.bucketize`), so no $n \times k$
# distance matrix is needed.
#
# **Initialization** decides which local optimum Lloyd reaches. Deep Compression compared random,
# density-based and **linear** initialization (centroids evenly spaced between $\min w$ and $\max w$) and found
# linear best: the rare large weights matter, and only linear init is sure to keep a centroid near them. The
# course's conventions (your functions must follow them exactly):
#
# - centroids are float32 and **sorted ascending**; labels are int64 and index the **flattened** weight;
# - a weight exactly on a midpoint goes to the **lower** index;
# - a centroid whose cluster becomes empty **keeps its previous value** (never NaN);
# - arithmetic in float64; Lloyd stops as soon as the labels stop changing.
#
# The widget after `kmeans_1d` shows the histogram of a real layer with your centroids on it.

# %% nbgrader={"grade": false, "grade_id": "linear_init", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_init(w: torch.Tensor, k: int) -> torch.Tensor:
    """`k` initial centroids evenly spaced from w.min() to w.max(), both ends included (Deep Compression).

    Args:
        w: floating tensor of any shape (float32, float16 or bfloat16) with at least one element.
        k: number of centroids, an int >= 1.
    Returns:
        float32 tensor [k], ascending: torch.linspace(w.min(), w.max(), k) computed in float64, then cast to
        float32. k = 1 gives [w.min()]; a constant w gives k equal values.
    Raises:
        TypeError if w is not a floating-point tensor; ValueError if w is empty or k is not an int >= 1.
        The input is not modified.
    """
    ### BEGIN SOLUTION
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.numel() == 0:
        raise ValueError("w is empty: k-means needs at least one value")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    x = w.detach().to(torch.float64)
    return torch.linspace(x.min().item(), x.max().item(), k, dtype=torch.float64).to(torch.float32)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_linear_init", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[-1.0, 0.5], [2.0, 0.0]])
assert_close(linear_init(w, 4), torch.tensor([-1.0, 0.0, 1.0, 2.0]), "linear_init(w, 4)", atol=1e-7, inputs={"w": w},
             hint="evenly spaced from min to max, both included: torch.linspace")
assert_close(linear_init(w, 1), torch.tensor([-1.0]), "linear_init(w, 1)", atol=0, inputs={"w": w})
assert_dtype(linear_init(w.half(), 3), torch.float32, "linear_init of a float16 tensor")
assert_not_modified(linear_init, w, 4)
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_linear_init
check_linear_init(linear_init)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "kmeans_1d_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Lloyd's algorithm, vectorized
# One iteration without a Python loop over weights or clusters: the cluster sums are
# `torch.zeros(k).index_add_(0, labels, x)`, the counts `torch.bincount(labels, minlength=k)`, and the new
# labels `torch.bucketize(x, midpoints)`. `random` and `kmeans++` inits (Arthur & Vassilvitskii, 2007,
# *k-means++: The Advantages of Careful Seeding*) are given: call `initial_centroids(w, k, init, seed)`.

# %% nbgrader={"grade": false, "grade_id": "kmeans_1d", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kmeans_1d(w: torch.Tensor, k: int, iters: int = 100, init: str = "linear",
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on the flattened `w`, in float64.

    1. Start from init == "linear": your `linear_init(w, k)`; "random" or "kmeans++": the given
       `initial_centroids(w, k, init, seed)`. Both return ascending float32 [k]; work on them in float64.
    2. Assign every value to its nearest centroid (a value exactly on a midpoint goes to the lower index).
    3. Repeat at most `iters` times: update each centroid to the mean of its members (an empty cluster keeps
       its centroid), re-assign; stop as soon as the labels did not change. (In 1-D the centroids stay sorted.)
    iters = 0 returns the initial centroids and their assignment.

    Args:
        w: floating tensor of any shape (float32/float16/bfloat16), n >= 1 elements; k: int >= 1.
        iters: int >= 0; init: "linear", "random" or "kmeans++" (ValueError otherwise); seed: for the random inits.
    Returns:
        (centroids float32 [k] ascending, labels int64 [n]) with labels[i] the nearest centroid of
        w.reshape(-1)[i]. The input is not modified.
    """
    ### BEGIN SOLUTION
    if init not in ("linear", "random", "kmeans++"):
        raise ValueError(f"init must be 'linear', 'random' or 'kmeans++', got {init!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    start = linear_init(w, k) if init == "linear" else initial_centroids(w, k, init, seed)
    x = w.detach().reshape(-1).to(torch.float64)
    centroids = start.to(torch.float64)
    labels = torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2)
    for _ in range(iters):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new_labels = torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids.to(torch.float32), labels
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kmeans_1d", "locked": true, "points": 22, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0, 5.0])
centroids, labels = kmeans_1d(w, 2)
assert_close(centroids, torch.tensor([0.44, 5.0]), "centroids of kmeans_1d(w, k=2)", atol=1e-6, inputs={"w": w},
             hint="linear init [0, 5]; the first cluster's mean is (0 + .1 + .2 + .9 + 1) / 5")
assert_equal_int(labels, torch.tensor([0, 0, 0, 0, 0, 1]), "labels of kmeans_1d(w, k=2)", inputs={"w": w})
assert_dtype(centroids, torch.float32, "kmeans_1d centroids")
assert_dtype(labels, torch.int64, "kmeans_1d labels")
centroids, labels = kmeans_1d(w, 3)
assert_close(centroids, torch.tensor([0.44, 2.5, 5.0]), "centroids of kmeans_1d(w, k=3)", atol=1e-6, inputs={"w": w},
             hint="linear init [0, 2.5, 5]: no value is nearest to 2.5, so that cluster is empty and keeps 2.5 (no NaN)")
w2 = torch.tensor([0.0, 2.0, 2.8, 7.2, 8.0, 10.0])
centroids, labels = kmeans_1d(w2, 3)
assert_close(centroids, torch.tensor([1.6, 5.0, 8.4]), "centroids of kmeans_1d(w2, k=3)", atol=1e-5, inputs={"w2": w2},
             hint="repeat until the labels stop changing: init [0, 5, 10], update 1 gives [1, 5, 9]; re-assign "
                  "(cluster 1 is now empty and keeps 5), update 2 gives [1.6, 5, 8.4]")
assert_equal_int(labels, torch.tensor([0, 0, 0, 2, 2, 2]), "labels of kmeans_1d(w2, k=3) (nearest final centroid)",
                 inputs={"w2": w2})
centroids, labels = kmeans_1d(w.reshape(2, 3), 2, iters=0)
assert_close(centroids, torch.tensor([0.0, 5.0]), "kmeans_1d(w [2, 3], k=2, iters=0) returns the init", atol=0)
assert_shape(labels, (6,), "labels of a [2, 3] weight (they index the flattened weight)")
assert_not_modified(kmeans_1d, torch.tensor([0.9, 0.0, 5.0, 0.2]), 2, what="kmeans_1d leaves an unsorted w unchanged")
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_kmeans_1d
check_kmeans_1d(kmeans_1d)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_explore", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: centroids on a real layer
# The histogram is `conv2` of the course CNN (18,432 weights). Red lines: your k-means centroids; blue dashed:
# the $2^b$ evenly spaced levels a min-max linear quantizer would use. Compare the two SSEs at 2, 3 and 4 bits,
# and switch the init: where does `random` put its centroids, and what happens to the largest weights?

# %% nbgrader={"grade": false, "grade_id": "part1_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.kmeans.kmeans_explorer(model.conv2.weight.detach(), kmeans_fn=kmeans_1d)

# %% [markdown] nbgrader={"grade": false, "grade_id": "codebook_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### A quantized tensor is a codebook
# `Codebook(centroids, labels)` (a named tuple from `lowbit.quant.kmeans`) is what k-means quantization
# stores; `decode` turns it back into a weight tensor for the forward pass; `compressed_bits` counts its size.

# %% nbgrader={"grade": false, "grade_id": "kmeans_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kmeans_quantize(w: torch.Tensor, bits: int, iters: int = 100, init: str = "linear") -> Codebook:
    """K-means-quantize `w` to k = 2^bits shared values with your `kmeans_1d`.

    Args:
        w: floating tensor of any shape; bits: an int in 1..16 (ValueError otherwise, e.g. 0, 17 or 2.5).
        iters, init: passed to `kmeans_1d`.
    Returns:
        Codebook(centroids float32 [2^bits] ascending, labels int64 [w.numel()]). The input is not modified.
    """
    ### BEGIN SOLUTION
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
    centroids, labels = kmeans_1d(w, 2**bits, iters=iters, init=init)
    return Codebook(centroids, labels)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kmeans_quantize", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[0.0, 0.1], [0.2, 0.9], [1.0, 5.0]])
codebook = kmeans_quantize(w, 1)
assert hasattr(codebook, "centroids") and hasattr(codebook, "labels"), \
    f"kmeans_quantize must return Codebook(centroids, labels), got {type(codebook).__name__}"
assert_close(codebook.centroids, torch.tensor([0.44, 5.0]), "centroids of kmeans_quantize(w, bits=1)", atol=1e-6,
             inputs={"w": w}, hint="bits=1 means k = 2^1 = 2 centroids")
assert_equal_int(codebook.labels, torch.tensor([0, 0, 0, 0, 0, 1]), "labels of kmeans_quantize(w, bits=1)")
assert_shape(kmeans_quantize(torch.randn(5, 4, 3, 3), 3).centroids, (8,), "centroids of a 3-bit codebook")
assert_not_modified(kmeans_quantize, w, 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_kmeans_quantize
check_kmeans_quantize(kmeans_quantize)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "decode", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decode(codebook: Codebook, shape) -> torch.Tensor:
    """The dequantized weights: codebook.centroids[codebook.labels], reshaped to `shape`.

    Args:
        codebook: (centroids [k] floating, labels int64 [n]) — a Codebook or a plain (centroids, labels) pair.
        shape: a tuple or torch.Size whose product is n (ValueError naming both numbers otherwise).
    Returns:
        tensor of `shape` in the centroids' dtype. Neither input is modified.
    """
    ### BEGIN SOLUTION
    centroids, labels = codebook
    if math.prod(shape) != labels.numel():
        raise ValueError(f"shape {tuple(shape)} holds {math.prod(shape)} values but the codebook has "
                         f"{labels.numel()} labels")
    return centroids[labels.reshape(-1)].reshape(tuple(shape))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decode", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
codebook = Codebook(torch.tensor([-0.5, 0.25, 2.0]), torch.tensor([2, 0, 1, 1, 0, 2]))
assert_close(decode(codebook, (2, 3)), torch.tensor([[2.0, -0.5, 0.25], [0.25, -0.5, 2.0]]),
             "decode(codebook, (2, 3))", atol=0, inputs={"codebook": codebook}, hint="centroids[labels], then reshape")
assert_shape(decode(codebook, torch.Size([3, 2, 1])), (3, 2, 1), "decode(codebook, torch.Size([3, 2, 1]))")
try:
    decode(codebook, (4, 2))
except ValueError:
    pass
else:
    raise AssertionError("decode(codebook with 6 labels, (4, 2)) must raise ValueError: 8 values cannot come from 6 labels")
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_decode
check_decode(decode)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "compressed_bits", "locked": false, "schema_version": 3, "solution": true, "task": false}
def compressed_bits(numel: int, bits: int, codebook_bits: int = 32) -> int:
    """Storage in bits of a k-means-quantized tensor: numel * bits (indices) + 2^bits * codebook_bits.

    Args:
        numel: number of weights, an int >= 0; bits: an int in 1..16; codebook_bits: bits per centroid (int >= 0).
    Returns:
        a Python int. ValueError for a negative numel or codebook_bits, or bits outside 1..16.
    """
    ### BEGIN SOLUTION
    for name, value in (("numel", numel), ("codebook_bits", codebook_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
    return numel * bits + 2**bits * codebook_bits
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_compressed_bits", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
assert_equal_int(compressed_bits(1000, 4), 4512, "compressed_bits(1000, 4)", hint="1000 * 4 index bits + 16 centroids * 32 bits")
assert_equal_int(compressed_bits(10, 8), 8272, "compressed_bits(10, 8) — the codebook dominates a small tensor")
assert_equal_int(compressed_bits(1000, 4, codebook_bits=16), 4256, "compressed_bits(1000, 4, codebook_bits=16)")
assert type(compressed_bits(5, 2)) is int, "compressed_bits must return a Python int"
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_compressed_bits
check_compressed_bits(compressed_bits)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: one layer, k-means against the uniform grid
# `conv2` at 2–4 bits: SSE of your k-means codebook, SSE of the same number of evenly spaced levels (what
# `linear_init` starts from, i.e. min-max linear quantization), and the storage your `compressed_bits` counts.

# %% nbgrader={"grade": false, "grade_id": "part1_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
conv2_weight = model.conv2.weight.detach()
for bits in (4, 3, 2):
    codebook = kmeans_quantize(conv2_weight, bits)
    levels = viz.kmeans.uniform_levels(conv2_weight, 2**bits)
    uniform_labels = torch.bucketize(conv2_weight.reshape(-1).double(), (levels[:-1] + levels[1:]) / 2)
    kmeans_sse = sse(conv2_weight, codebook.centroids, codebook.labels)
    uniform_sse = sse(conv2_weight, levels.float(), uniform_labels)
    stored = compressed_bits(conv2_weight.numel(), bits)
    print(f"{bits} bits: k-means SSE {kmeans_sse:.4f}, uniform SSE {uniform_sse:.4f} ({uniform_sse / kmeans_sse:.1f}x), "
          f"storage {stored:,} bits = {32 * conv2_weight.numel() / stored:.1f}x smaller than fp32")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — The whole CNN
# Every convolution and the classifier get their own codebook (one per layer, as in Deep Compression);
# biases and BatchNorm stay fp32. The model size counts your `compressed_bits` for the quantized weights and
# 32 bits for every other parameter. For contrast, the last column is Lab 1's symmetric **per-channel linear**
# quantization at the same bits (lowbit's reference; at 2 bits its restricted grid has only 3 levels).
#
# The first convolution is special: it sees raw pixels through only 9 weights per filter, so moving one
# weight to a shared value changes a whole feature map, and its 32 filters (largest $|w|$ from 0.35 to 0.90)
# must share one codebook. It holds 0.5 % of the parameters (288). Low-bit networks usually keep the first
# layer at higher precision (XNOR-Net, Rastegari et al. 2016; DoReFa-Net, Zhou et al. 2016; PACT, Choi et al.
# 2018). The column *conv1 fp32* does that: conv1 stays float (288 × 32 bits = 1.1 KiB), every other layer
# gets its codebook.

# %% nbgrader={"grade": false, "grade_id": "part2_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
def kmeans_quantize_model(model: nn.Module, bits: int, keep_float: tuple[str, ...] = ()
                          ) -> tuple[nn.Module, dict[str, Codebook]]:
    """A copy of `model` with every Conv2d/Linear weight, except the layers named in `keep_float`, replaced by
    its k-means reconstruction: lowbit's model rewriter running your `kmeans_quantize` and `decode`.
    Returns (copy, {layer name: Codebook})."""
    return lowbit.quant.kmeans.quantize_model_kmeans(model, bits, exclude=keep_float, quantize_fn=kmeans_quantize,
                                                     decode_fn=decode)


def model_bits(model: nn.Module, codebooks: dict[str, Codebook], bits: int) -> int:
    """Storage of a k-means-quantized model: codebook layers by your `compressed_bits`, everything else fp32."""
    return lowbit.quant.kmeans.model_bits(model, codebooks, bits, compressed_bits)


fp32_bits = 32 * sum(p.numel() for p in model.parameters())
kmeans_models, kmeans_results = {}, {}      # every layer quantized
first_float_models, first_float_results = {}, {}  # conv1 kept fp32
for bits in tqdm((8, 4, 3, 2), desc="k-means CNN"):
    for models, results, keep_float in ((kmeans_models, kmeans_results, ()),
                                        (first_float_models, first_float_results, ("conv1",))):
        models[bits] = kmeans_quantize_model(model, bits, keep_float)
        quantized, codebooks = models[bits]
        accuracy = lowbit.train.evaluate(quantized, test_loader, max_batches=EVAL_BATCHES)
        results[bits] = (accuracy, model_bits(model, codebooks, bits))
    linear = lowbit.quant.ptq.map_weights(model, lambda w: lowbit.quant.granularity.fake_quantize_per_channel(w, bits))
    kmeans_results[bits] += (lowbit.train.evaluate(linear, test_loader, max_batches=EVAL_BATCHES),)
print(f"FP32: {100 * fp32_accuracy:.2f} %, {fp32_bits / 8 / 1024:.1f} KiB")
print(f"{'':4s} {'all layers':>26s} {'conv1 fp32':>26s}")
print(f"{'bits':>4s} {'accuracy':>10s} {'KiB':>6s} {'vs fp32':>8s} {'accuracy':>10s} {'KiB':>6s} {'vs fp32':>8s} "
      f"{'linear per-channel':>19s}")
for bits, (accuracy, size, linear_accuracy) in kmeans_results.items():
    first_accuracy, first_size = first_float_results[bits]
    print(f"{bits:4d} {100 * accuracy:9.2f}% {size / 8 / 1024:6.1f} {fp32_bits / size:7.1f}x "
          f"{100 * first_accuracy:9.2f}% {first_size / 8 / 1024:6.1f} {fp32_bits / first_size:7.1f}x "
          f"{100 * linear_accuracy:18.2f}%")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — Fine-tuning the codebook
#
# Keep every label fixed and train the centroids. Weight $w_i$ equals $c_{\ell_i}$, so by the chain rule
# (Deep Compression, eq. 3)
#
# $$ \frac{\partial \mathcal{L}}{\partial c_j} \;=\; \sum_{i} \frac{\partial \mathcal{L}}{\partial w_i}\,
#    \frac{\partial w_i}{\partial c_j} \;=\; \sum_{i \,:\, \ell_i = j} \frac{\partial \mathcal{L}}{\partial w_i} : $$
#
# the gradient of a shared value is the **sum** of the gradients of the weights that share it — a grouped
# sum, `index_add_` or `bincount(labels, weights=...)`, no loop. An SGD step is then $c_j \leftarrow c_j -
# \eta\,\partial\mathcal{L}/\partial c_j$ and the layer's weights are decoded again.
#
# A second rule, closer to Lloyd: take an ordinary optimizer step on the decoded **weights**, then move every
# centroid to the **mean** of its members (an empty cluster keeps its centroid). With plain SGD the mean
# rule moves centroid $j$ by $\eta/|C_j|$ times the summed gradient — the same direction as the gradient
# rule, but a step scaled down by the cluster size.

# %% nbgrader={"grade": false, "grade_id": "centroid_gradients", "locked": false, "schema_version": 3, "solution": true, "task": false}
def centroid_gradients(grad_w: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """dL/dc_j = sum of grad_w over the weights with label j (no Python loop).

    Args:
        grad_w: floating tensor of any shape with n elements (the weight's .grad).
        labels: int64 [n], values in [0, k), indexing grad_w.reshape(-1).
        k: number of centroids (int >= 1); clusters with no member get 0.
    Returns:
        tensor [k] in grad_w's dtype (e.g. float16 in, float16 out). ValueError if labels.numel() != n.
        Neither input is modified.
    """
    ### BEGIN SOLUTION
    if labels.numel() != grad_w.numel():
        raise ValueError(f"labels has {labels.numel()} elements but grad_w has {grad_w.numel()}")
    return torch.zeros(k, dtype=grad_w.dtype).index_add_(0, labels.reshape(-1), grad_w.detach().reshape(-1))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_centroid_gradients", "locked": true, "points": 14, "schema_version": 3, "solution": false, "task": false}
grad_w = torch.tensor([[0.1, -0.2, 0.3], [0.5, 0.0, -1.0]])
labels = torch.tensor([0, 1, 0, 2, 1, 2])
assert_not_modified(centroid_gradients, grad_w, labels, 4)  # first: a function that edits grad_w would spoil the rest
assert_close(centroid_gradients(grad_w, labels, 4), torch.tensor([0.4, -0.2, -0.5, 0.0]),
             "centroid_gradients(grad_w, labels, k=4)", atol=1e-6, inputs={"grad_w": grad_w, "labels": labels},
             hint="sum (not mean) per cluster; centroid 3 has no member, so its gradient is 0")
assert_dtype(centroid_gradients(grad_w.double(), labels, 4), torch.float64, "centroid_gradients of a float64 grad_w")
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_centroid_gradients
check_centroid_gradients(centroid_gradients)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "update_centroids_mean", "locked": false, "schema_version": 3, "solution": true, "task": false}
def update_centroids_mean(w: torch.Tensor, labels: torch.Tensor, k: int, old_centroids: torch.Tensor) -> torch.Tensor:
    """Lloyd's update step: centroid j = mean of the w values with label j; an empty cluster keeps old_centroids[j].

    Args:
        w: floating tensor of any shape with n elements; labels: int64 [n] in [0, k); k: int >= 1.
        old_centroids: floating tensor [k].
    Returns:
        tensor [k] in old_centroids' dtype; sums and counts accumulate in float64 (no Python loop, never NaN).
        ValueError if labels.numel() != n or old_centroids does not have k elements. No input is modified.
    """
    ### BEGIN SOLUTION
    if labels.numel() != w.numel():
        raise ValueError(f"labels has {labels.numel()} elements but w has {w.numel()}")
    if old_centroids.numel() != k:
        raise ValueError(f"old_centroids has {old_centroids.numel()} elements, expected k = {k}")
    labels = labels.reshape(-1)
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w.detach().reshape(-1).to(torch.float64))
    counts = torch.bincount(labels, minlength=k)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), old_centroids.detach().to(torch.float64))
    return means.to(old_centroids.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_update_centroids_mean", "locked": true, "points": 16, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[0.1, 0.3, 0.5], [2.0, 4.0, 9.0]])
labels = torch.tensor([0, 0, 1, 2, 2, 2])
old = torch.tensor([0.0, 0.4, 3.0, 7.0])
assert_not_modified(update_centroids_mean, w, labels, 4, old)  # first: a function that edits old would spoil the rest
assert_close(update_centroids_mean(w, labels, 4, old), torch.tensor([0.2, 0.5, 5.0, 7.0]),
             "update_centroids_mean(w, labels, k=4, old)", atol=1e-6, inputs={"w": w, "labels": labels, "old": old},
             hint="centroid 3 has no member: it keeps its old value 7.0 (0 / 0 would be NaN)")
assert_dtype(update_centroids_mean(w, labels, 4, old), torch.float32, "result for float32 old_centroids")
assert_dtype(update_centroids_mean(w, labels, 4, old.double()), torch.float64, "result for float64 old_centroids")
### BEGIN HIDDEN TESTS
from autograder.checks.lab2_kmeans import check_update_centroids_mean
check_update_centroids_mean(update_centroids_mean)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: fine-tune the codebooks of the CNN
# Starting from the Part 2 codebooks with conv1 kept fp32, two epochs over the embedded training set (6,000
# images, batches of 256) with Adam: on the centroids (gradient rule, your `centroid_gradients`) or on the
# weights followed by your `update_centroids_mean` (mean rule). Labels never change. The same optimizer also
# trains the few float parameters left (conv1, biases, BatchNorm scales and shifts: 618 values), and
# BatchNorm re-estimates its statistics for the quantized weights (train mode). The learning rate decays from
# $10^{-3}$ to 0 along a cosine (Loshchilov & Hutter 2017), so the result does not depend on where the noise
# of the last batches left the centroids. `lowbit.quant.kmeans.finetune_codebooks` runs the loop and calls
# your functions.

# %% nbgrader={"grade": false, "grade_id": "part3_finetune_4bit", "locked": true, "schema_version": 3, "solution": false, "task": false}
FINETUNE_EPOCHS = 2
finetune_results = {}


def finetune_and_evaluate(bits: int, rule: str) -> float:
    """Fine-tune the Part 2 codebooks (conv1 fp32) at `bits` with `rule` (your functions inside); test accuracy."""
    quantized, codebooks = first_float_models[bits]
    train_loader, _ = lowbit.data.loaders(batch_size=256, seed=0)  # a fresh loader: every run sees the same batches
    tuned = finetune_codebooks(quantized, codebooks, train_loader, epochs=FINETUNE_EPOCHS, lr=1e-3, rule=rule,
                               optimizer="adam", schedule="cosine", train_others=True, max_batches=FINETUNE_BATCHES,
                               gradient_fn=centroid_gradients, mean_fn=update_centroids_mean)
    return lowbit.train.evaluate(tuned.model, test_loader, max_batches=EVAL_BATCHES)


def finetune_with_both_rules(bits: int) -> None:
    for rule in tqdm(("gradient", "mean"), desc=f"fine-tune {bits}-bit codebooks"):
        finetune_results[bits, rule] = finetune_and_evaluate(bits, rule)
    print(f"{bits}-bit: before {100 * first_float_results[bits][0]:.2f} %, after FT: gradient rule "
          f"{100 * finetune_results[bits, 'gradient']:.2f} %, mean rule {100 * finetune_results[bits, 'mean']:.2f} %")


finetune_with_both_rules(4)

# %% nbgrader={"grade": false, "grade_id": "part3_finetune_3bit", "locked": true, "schema_version": 3, "solution": false, "task": false}
finetune_with_both_rules(3)

# %% nbgrader={"grade": false, "grade_id": "part3_finetune_2bit", "locked": true, "schema_version": 3, "solution": false, "task": false}
finetune_with_both_rules(2)
print(f"\n{'bits':>4s} {'before':>8s} {'after FT (gradient)':>20s} {'after FT (mean)':>16s} {'epochs':>7s}")
for bits in (4, 3, 2):
    print(f"{bits:4d} {100 * first_float_results[bits][0]:7.2f}% {100 * finetune_results[bits, 'gradient']:19.2f}% "
          f"{100 * finetune_results[bits, 'mean']:15.2f}% {FINETUNE_EPOCHS:7d}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — Beyond Lloyd
#
# Lloyd's algorithm only finds a **local** optimum, and may need many iterations to get there. In one
# dimension we can do much better:
#
# - **Faster iterations.** Sort the weights once and build prefix sums $P_m = \sum_{i<m} x_{(i)}$. A cluster
#   is then a contiguous run of the sorted values: its boundaries are `searchsorted` of the midpoints
#   ($O(k \log n)$) and its sum is $P_{\text{end}} - P_{\text{start}}$ ($O(1)$). Each iteration costs
#   $O(k \log n)$ instead of $O(n \log k)$, independent of $n$.
# - **The optimum.** An optimal 1-D clustering is a split of the sorted values into $k$ contiguous runs, so
#   dynamic programming finds it exactly: $D[m][i] = \min_j \big(D[m-1][j-1] + \mathrm{SSE}(x_{(j)}..x_{(i)})\big)$
#   (Wang & Song, 2011, *Ckmeans.1d.dp: Optimal k-means Clustering in One Dimension by Dynamic Programming*).
#   `lowbit`'s `kmeans_1d_optimal` implements it.
#
# Below: the classifier weights (`fc`, 5,760 values) — how far above the optimal SSE does your `kmeans_1d`
# (100 iterations) stop, for each init, as $k$ grows? (Random and k-means++ use seed 0.)

# %% nbgrader={"grade": false, "grade_id": "part4_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
fc_weight = model.fc.weight.detach()
ks = (4, 16, 64) if lowbit.GRADING else (4, 16, 64, 256)
print(f"{'k':>4s} {'optimal SSE':>12s}" + "".join(f" {init + ' / opt':>16s}" for init in ("linear", "random", "kmeans++")))
lloyd_gap = {}
for k in ks:
    optimum = sse(fc_weight, *kmeans_1d_optimal(fc_weight, k))
    for init in ("linear", "random", "kmeans++"):
        lloyd_gap[k, init] = sse(fc_weight, *kmeans_1d(fc_weight, k, iters=100, init=init)) / optimum
    print(f"{k:4d} {optimum:12.5f}" + "".join(f" {lloyd_gap[k, init]:16.3f}" for init in ("linear", "random", "kmeans++")))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_exercise_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Optional exercise (not graded): Lloyd on sorted values
# Implement the same iterations as your `kmeans_1d` (linear init only) on the sorted values with prefix sums.
# With the same `iters` it must return the same centroids (up to float64 rounding of the sums) and labels.
# Hints: `torch.searchsorted(sorted_x, midpoints, right=True)` gives the first index of every cluster but the
# first (a value on a midpoint goes to the lower cluster); compare the boundaries instead of the labels to
# stop; compute the labels once at the end. The cell after it times both versions if you implemented it.

# %% nbgrader={"grade": false, "grade_id": "kmeans_1d_sorted", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kmeans_1d_sorted(w: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd with linear init on the sorted, flattened `w`: O(k log n) per iteration after one sort.

    Returns (centroids float32 [k] ascending, labels int64 [n]) like `kmeans_1d(w, k, iters)`.
    """
    ### BEGIN SOLUTION
    x = w.detach().reshape(-1).to(torch.float64)
    sorted_x = torch.sort(x).values
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_x, 0)])
    edges = torch.tensor([0, x.numel()])

    def boundaries(c: torch.Tensor) -> torch.Tensor:
        inner = torch.searchsorted(sorted_x, (c[:-1] + c[1:]) / 2, right=True)
        return torch.cat([edges[:1], inner, edges[1:]])

    centroids = linear_init(w, k).to(torch.float64)
    bounds = boundaries(centroids)
    for _ in range(iters):
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new_bounds = boundaries(centroids)
        if torch.equal(new_bounds, bounds):
            break
        bounds = new_bounds
    labels = torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2)
    return centroids.to(torch.float32), labels
    ### END SOLUTION


# %% nbgrader={"grade": false, "grade_id": "part4_exercise_run", "locked": true, "schema_version": 3, "solution": false, "task": false}
big = torch.cat([model.conv3.weight.detach().reshape(-1)] * (1 if lowbit.GRADING else 8))
try:
    start = time.perf_counter()
    fast_centroids, fast_labels = kmeans_1d_sorted(big, 64, iters=100)
    fast_seconds = time.perf_counter() - start
except NotImplementedError:
    print("kmeans_1d_sorted is not implemented (optional): skipped")
else:
    start = time.perf_counter()
    plain_centroids, plain_labels = kmeans_1d(big, 64, iters=100)
    plain_seconds = time.perf_counter() - start
    same = torch.allclose(fast_centroids, plain_centroids, rtol=1e-5, atol=1e-7) and torch.equal(fast_labels, plain_labels)
    print(f"{big.numel():,} values, k = 64, 100 iterations: kmeans_1d {plain_seconds:.2f} s, "
          f"kmeans_1d_sorted {fast_seconds:.2f} s ({plain_seconds / fast_seconds:.1f}x); same result: {same}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Wrap-up
# Your results, all computed with your functions in this notebook; compare them with the reference table in
# `benchmarks/RESULTS.md` (same embedded test set, same seeds). Every step is deterministic: a gap of more
# than a few tenths of a point usually means a bug.

# %% nbgrader={"grade": false, "grade_id": "part5_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
print(f"{'':4s} {'k-means, before FT':>22s} {'conv1 fp32, after FT':>22s}")
print(f"{'bits':>4s} {'all':>10s} {'conv1 fp32':>11s} {'gradient':>11s} {'mean':>10s} {'linear/ch':>10s} "
      f"{'size vs fp32 (conv1 fp32)':>26s}")
for bits in (8, 4, 3, 2):
    accuracy, _, linear_accuracy = kmeans_results[bits]
    first_accuracy, first_size = first_float_results[bits]
    tuned = {rule: (f"{100 * finetune_results[bits, rule]:.2f}%" if (bits, rule) in finetune_results else "—")
             for rule in ("gradient", "mean")}
    print(f"{bits:4d} {100 * accuracy:9.2f}% {100 * first_accuracy:10.2f}% {tuned['gradient']:>11s} "
          f"{tuned['mean']:>10s} {100 * linear_accuracy:9.2f}% {fp32_bits / first_size:25.1f}x")
print(f"FP32 {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 2–4 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (4 points).** In the Part 4 table, which init stops furthest above the optimum at large $k$, and why?
# Why does Deep Compression still prefer linear init to random init, although k-means++ reaches a lower SSE?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# Random init is worst at large k (several times the optimal SSE at k = 256): it draws its centroids where
# the weights are dense, so dozens of centroids crowd near zero and the tails get almost none. Linear init
# wastes centroids in the sparse tails instead (its SSE is also well above the optimum, ~2–3× here), but it is
# the only init that is sure to represent the largest weights, which carry much of a layer's output; SSE
# weighs every weight equally, accuracy does not. k-means++ is a better SSE optimizer, but random, seed-dependent.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (5 points).** With plain SGD and the same learning rate, the gradient rule and the mean rule move the
# centroids in the same direction but by different amounts (Part 3). Which centroids move much faster under
# the gradient rule, and what does that mean for choosing its learning rate? Why does Adam make the two rules behave alike?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# The gradient rule steps by η·Σ grads, the mean rule by η·Σ grads / |C_j|. Centroids with many members — those
# near zero, holding most of the weights — move |C_j| times faster under the gradient rule (thousands of times
# for a big layer), so its SGD learning rate must be far smaller than the one that suits the weights, or the
# crowded centroids overshoot and accuracy collapses. Adam divides each parameter's step by a running estimate
# of its gradient's magnitude, which cancels the |C_j| factor, so both rules take steps of about η.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Compare k-means and linear per-channel quantization of the CNN at 3 and 2 bits (accuracy
# and storage, from your table). Then say what hardware can run each format directly, and what k-means
# therefore saves at inference time and what it does not.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# At 3 bits the two are about equal (≈ 89.8 % vs 89.6 %); at 2 bits per-channel linear collapses (≈ 17 %: its
# restricted grid has 3 levels) while k-means keeps ≈ 66 % (≈ 85 % with conv1 fp32), and ≈ 91 % after fine-tuning
# the codebooks — for nearly the same storage (a 2^b × 32-bit codebook per layer instead of one 32-bit scale per
# channel). But linear codes run directly on integer MAC units (int8/int4 tensor cores, DSPs), while k-means
# indices must first be looked up in the codebook, giving fp (or 8-bit) weights: the arithmetic stays full
# precision. K-means saves memory and bandwidth (model size, weight traffic),
# not compute, unless the hardware has lookup-table support.

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - S. Han, H. Mao, W. J. Dally, 2016. *Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman Coding.* ICLR.
# - S. P. Lloyd, 1982. *Least squares quantization in PCM.* IEEE Transactions on Information Theory.
# - D. Arthur, S. Vassilvitskii, 2007. *k-means++: The Advantages of Careful Seeding.* SODA.
# - H. Wang, M. Song, 2011. *Ckmeans.1d.dp: Optimal k-means Clustering in One Dimension by Dynamic Programming.* The R Journal.
# - Y. Gong, L. Liu, M. Yang, L. Bourdev, 2014. *Compressing Deep Convolutional Networks using Vector Quantization.* arXiv:1412.6115.
# - P. Stock et al., 2020. *And the Bit Goes Down: Revisiting the Quantization of Neural Networks.* ICLR.
# - S. Kim et al., 2024. *SqueezeLLM: Dense-and-Sparse Quantization.* ICML.
#
# Next: **Lab 3 — quantization-aware training**, where the rounding itself is trained through.
