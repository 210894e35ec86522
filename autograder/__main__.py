"""Command line ``autograder`` (also ``python -m autograder``): release, grade, secret, check, gradescope, export."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autograder", description="lowbit's sandboxed nbgrader pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    release = sub.add_parser("release", help="build solutions/<lab>/<lab>.ipynb from .py and labs/ with nbgrader")
    release.add_argument("labs", nargs="*", help="lab names (default: every lab in solutions/)")
    release.add_argument("--course", type=Path, default=REPO_ROOT, help="course root (default: this repo)")
    grade = sub.add_parser("grade", help="grade a class: CSV, HTML feedback, nbgrader gradebook")
    grade.add_argument("lab")
    grade.add_argument("submissions", type=Path,
                       help="folder <student>/<lab>.ipynb, a zip of it, or an nbgrader submitted/ tree")
    grade.add_argument("--out", type=Path, required=True, help="output folder")
    grade.add_argument("--jobs", type=int, default=None, help="parallel submissions (default: all cores)")
    grade.add_argument("--force", action="store_true", help="regrade even unchanged submissions")
    grade.add_argument("--unsafe", action="store_true", help="run without the bwrap sandbox (marked in the CSV)")
    grade.add_argument("--course", type=Path, default=REPO_ROOT, help="course root (default: this repo)")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")
    grade.add_argument("--secret-file", type=Path, default=None,
                       help="the course secret keying the hidden checks' inputs (default: $AUTOGRADER_SECRET, "
                            "else OUT/grading-secret)")
    grade.add_argument("--practice", action="store_true",
                       help="grade with the public inputs (no secret): not for credit, said in the CSV and feedback")
    grade.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                       help="grade on this Dask cluster (one task per submission) instead of a local pool")
    grade.add_argument("--worker-course", type=Path, default=None,
                       help="with --scheduler: the course root on the workers (default: --course)")
    secret = sub.add_parser("secret", help="create the course secret OUT/grading-secret (once per course offering)")
    secret.add_argument("--out", type=Path, required=True, help="the grading output folder (next to the gradebook)")
    _budget_arguments(grade)
    scope = sub.add_parser("gradescope", help="build a Gradescope autograder bundle (setup.sh, run_autograder)")
    scope.add_argument("lab")
    scope.add_argument("--out", type=Path, required=True, help="the zip to write, e.g. lab1_gradescope.zip")
    scope.add_argument("--course", type=Path, default=REPO_ROOT, help="course root (default: this repo)")
    scope.add_argument("--secret-file", type=Path, default=None,
                       help="the course secret (default: $AUTOGRADER_SECRET, else the zip's folder/grading-secret)")
    scope.add_argument("--practice", action="store_true", help="no secret: the public inputs, not for credit")
    scope.add_argument("--unsafe", action="store_true",
                       help="with --practice only: grade even where bubblewrap cannot run (marked in results)")
    scope_run = sub.add_parser("gradescope-run", help="inside Gradescope (run_autograder): grade the submission")
    scope_run.add_argument("--root", type=Path, default=Path("/autograder"), help="the autograder root")
    scope_run.add_argument("--self-test", action="store_true",
                           help="grade the lab's own solution (setup.sh does, at image build time)")
    export = sub.add_parser("export", help="grades.csv -> a Canvas or Moodle gradebook import CSV")
    export.add_argument("format", choices=["canvas", "moodle"])
    export.add_argument("grades", type=Path, help="grades.csv written by `autograder grade`")
    export.add_argument("--out", type=Path, required=True, help="the import CSV to write")
    export.add_argument("--assignment", default=None,
                        help="the LMS column: Canvas 'Name (id)' of the assignment, Moodle grade item name "
                             "(default: the lab's name)")
    export.add_argument("--roster", type=Path, default=None,
                        help="the LMS's own gradebook export (Canvas: Grades > Export; Moodle: Export > Plain "
                             "text file): student identities are taken from it")
    export.add_argument("--match", default=None,
                        help="the roster column holding autograder's student ids (default: Canvas 'SIS Login "
                             "ID', Moodle 'Email address')")
    check = sub.add_parser("check", help="students: run your notebook the way grading will (visible tests)")
    check.add_argument("notebook", type=Path)
    check.add_argument("--lab", help="lab name (default: the notebook's file name)")
    check.add_argument("--course", type=Path, default=REPO_ROOT, help="course root (default: this repo)")
    check.add_argument("--sandbox", action="store_true", help="use the bwrap sandbox (default: plain process)")
    return parser


def _budget_arguments(grade: argparse.ArgumentParser) -> None:
    """Time budgets relative to the reference solution's measured time (see autograder.sandbox.TimeBudget)."""
    from .sandbox import TimeBudget
    default = TimeBudget()
    for flag, field, text in (("--time-factor", "factor", "each cell and call: this many times the reference's time"),
                              ("--time-floor", "floor_seconds", "... but at least this many seconds"),
                              ("--total-factor", "total_factor", "the whole notebook: this many times the reference's"),
                              ("--total-floor", "total_floor_seconds", "... but at least this many seconds")):
        grade.add_argument(flag, dest=field, type=float, default=getattr(default, field),
                           help=f"{text} (default {getattr(default, field):g})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "release":
        from .release import release
        for path in release(args.course.resolve(), args.labs or None):
            print(f"released {path}")
        return 0
    if args.command == "grade":
        from .grade import GradingRefused, grade_class
        from .sandbox import TimeBudget
        budget = TimeBudget(factor=args.factor, floor_seconds=args.floor_seconds, total_factor=args.total_factor,
                            total_floor_seconds=args.total_floor_seconds)
        try:
            grade_class(args.lab, args.submissions, args.out, args.course, jobs=args.jobs, force=args.force,
                        unsafe=args.unsafe, progress=not args.quiet, practice=args.practice,
                        secret_file=args.secret_file, time_budget=budget, scheduler=args.scheduler,
                        worker_course=args.worker_course)
        except (GradingRefused, FileNotFoundError) as exc:
            print(f"autograder: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out / 'grades.csv'}, {args.out / 'feedback'}/, {args.out / 'gradebook.db'}")
        return 0
    if args.command == "secret":
        from .secret import SecretProblem, write_secret
        try:
            path = write_secret(args.out)
        except SecretProblem as exc:
            print(f"autograder: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path} (keep it out of the repository; `autograder grade ... --out {args.out}` reads it)")
        return 0
    if args.command == "gradescope":
        from .gradescope import BundleProblem, build_bundle
        try:
            path = build_bundle(args.lab, args.out, args.course, practice=args.practice,
                                secret_file=args.secret_file, unsafe=args.unsafe)
        except BundleProblem as exc:
            print(f"autograder: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}: upload it as the assignment's autograder (Gradescope: Configure Autograder > Zip "
              "file upload); it holds the course secret, keep it private")
        return 0
    if args.command == "gradescope-run":
        from .gradescope import main_run
        return main_run(args.root, args.self_test)
    if args.command == "export":
        from .lms import ExportProblem, export
        try:
            rows = export(args.format, args.grades, args.out, assignment=args.assignment, roster=args.roster,
                          match=args.match)
        except ExportProblem as exc:
            print(f"autograder: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} ({rows} students)")
        return 0
    from .check import check_notebook
    return check_notebook(args.notebook, args.course, args.lab, sandboxed=args.sandbox)


if __name__ == "__main__":
    sys.exit(main())
