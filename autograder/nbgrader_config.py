"""nbgrader configuration for the lowbit course (used by ``python -m autograder release`` and by instructors).

Run nbgrader commands from the repo root with ``--config autograder/nbgrader_config.py``, or let
``python -m autograder release`` do it. The gradebook lives in the git-ignored ``autograder/.work/``.
"""
from pathlib import Path

c = get_config()  # noqa: F821  (injected by traitlets when nbgrader loads this file)

ROOT = Path(__file__).resolve().parents[1]

c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"
c.CourseDirectory.db_url = f"sqlite:///{ROOT / 'autograder' / '.work' / 'gradebook.db'}"
# The jupytext twin ``<lab>.py`` holds the solutions: it must never be copied into labs/.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py", "*.md"]
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
