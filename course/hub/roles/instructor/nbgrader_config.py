"""nbgrader configuration of an instructor's server on the course hub (JUPYTER_CONFIG_PATH=course/hub/roles/instructor).

The course directory is ``~/$LOWBIT_COURSE_DIR`` (private to the instructor: mode 0700, made by
``hubctl.py course``) with the repository's layout: ``solutions/<lab>/<lab>.ipynb`` (nbgrader's source),
``labs/<lab>/`` (the released student version), then nbgrader's ``submitted/`` and ``feedback/`` and the
autograder's ``grading/<lab>/`` (grades.csv, feedback, gradebook.db).
"""
import os
from pathlib import Path

c = get_config()  # noqa: F821  (injected by traitlets when nbgrader loads this file)

COURSE = Path.home() / os.environ.get("LOWBIT_COURSE_DIR", "lowbit-course")
c.Exchange.root = os.environ["LOWBIT_EXCHANGE"]
c.CourseDirectory.course_id = os.environ["LOWBIT_COURSE_ID"]
c.CourseDirectory.root = str(COURSE)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"
c.CourseDirectory.db_url = f"sqlite:///{COURSE / 'gradebook.db'}"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py", "*.md"]
c.ExchangeFactory.submit = "lowbit_exchange.PrivateExchangeSubmit"
