"""nbgrader configuration of a student's server on the course hub (JUPYTER_CONFIG_PATH=course/hub/roles/student).

The hub's spawner sets LOWBIT_EXCHANGE and LOWBIT_COURSE_ID (course/hub/jupyterhub_config.py).
"""
import os

c = get_config()  # noqa: F821  (injected by traitlets when nbgrader loads this file)

c.Exchange.root = os.environ["LOWBIT_EXCHANGE"]
c.CourseDirectory.course_id = os.environ["LOWBIT_COURSE_ID"]
# Submissions readable by the instructors' group only, not by every account that learns their name.
c.ExchangeFactory.submit = "lowbit_exchange.PrivateExchangeSubmit"
