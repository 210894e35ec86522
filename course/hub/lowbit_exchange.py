"""nbgrader's submit step with private permissions (``c.ExchangeFactory.submit`` in course/hub/roles/*).

nbgrader's default exchange hides a submission only by its name: ``inbound/`` cannot be listed (mode 0733) and
each submission folder ends in 72 random bits, but the folder itself is mode 0777 and its files 0644, so any
account that learns the name (a shared screen, a log line, a backup listing) can read the notebook and its
``submission_secret.txt`` — which is what names the student's feedback file — and even write into it.

``PrivateExchangeSubmit`` closes that: after nbgrader's own copy, the submission's folders become 0770 and its
files 0640. Their group is the instructors' group, inherited from ``inbound/`` (owned by the instructor,
group ``lowbit-instructors``, set-group-id: ``hubctl.py course`` creates it so), so the instructors still collect
(read) and clean up (delete) submissions, and no other student can open them even knowing the path.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from nbgrader.exchange.default.submit import ExchangeSubmit
from nbgrader.utils import ignore_patterns

FILE_MODE = 0o640
DIR_MODE = 0o770


def make_private(folder: Path) -> None:
    """Owner read/write (and search for folders), group read (folders: read/write/search), others nothing."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(FILE_MODE)
        Path(dirpath).chmod(DIR_MODE)


class PrivateExchangeSubmit(ExchangeSubmit):
    """``nbgrader submit`` whose submission only its owner and the instructors' group can read."""

    def do_copy(self, src, dest, log=None) -> None:
        """nbgrader's copy (same ignore, include and size rules) without copying the source folders' modes:
        ``shutil.copytree`` would clear the set-group-id bit the submission folder inherits from ``inbound/``,
        and the timestamp and secret nbgrader writes next would then not belong to the instructors' group."""
        if Path(dest).parent != Path(self.inbound_path):
            return super().do_copy(src, dest, log)
        limit = 1000 * self.coursedir.max_dir_size
        if self.get_size(src) > limit:
            raise RuntimeError(f"Directory size is too big. Size is {self.get_size(src)}, maximum size is {limit}")
        ignore = ignore_patterns(exclude=self.coursedir.ignore, include=self.coursedir.include,
                                 max_file_size=self.coursedir.max_file_size, log=self.log)
        for dirpath, dirnames, filenames in os.walk(src):
            skipped = ignore(dirpath, dirnames + filenames)
            dirnames[:] = [name for name in dirnames if name not in skipped]
            target = Path(dest, os.path.relpath(dirpath, src))
            target.mkdir(exist_ok=True)          # inherits the group and the set-group-id bit of its parent
            for name in filenames:
                if name not in skipped:
                    shutil.copyfile(os.path.join(dirpath, name), target / name)

    def copy_files(self) -> None:
        inbound_group = os.stat(self.inbound_path).st_gid
        if not os.stat(self.inbound_path).st_mode & stat.S_ISGID:
            self.fail(f"{self.inbound_path} is not set-group-id: the instructors could not read a private "
                      "submission. Create the course's exchange folders with `course/hub/hubctl.py course`.")
        super().copy_files()
        dest = Path(self.inbound_path, self.assignment_filename)
        if os.stat(dest).st_gid != inbound_group:
            self.fail(f"{dest} did not inherit the group of {self.inbound_path}: not made private")
        make_private(dest)
