"""Reference implementations of the course's quantization methods, one module per idea.

Import the module you need, e.g. ``from lowbit.quant import linear`` or
``from lowbit.quant.linear import linear_quantize``. Modules are loaded lazily.
"""
from lowbit.utils import lazy_submodules

__getattr__ = lazy_submodules("lowbit.quant")
