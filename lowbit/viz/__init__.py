"""Interactive explorers (ipywidgets + matplotlib). Each takes the function it visualizes, the student's,
with lowbit's reference as the default. Without a widget front end they render one static figure.
"""
from lowbit.utils import lazy_submodules

__getattr__ = lazy_submodules("lowbit.viz")
