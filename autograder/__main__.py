"""Command line: ``autograder release|grade|secret|check`` (also ``python -m autograder``)."""
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
    secret = sub.add_parser("secret", help="create the course secret OUT/grading-secret (once per course offering)")
    secret.add_argument("--out", type=Path, required=True, help="the grading output folder (next to the gradebook)")
    _budget_arguments(grade)
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
                        secret_file=args.secret_file, time_budget=budget)
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
    from .check import check_notebook
    return check_notebook(args.notebook, args.course, args.lab, sandboxed=args.sandbox)


if __name__ == "__main__":
    sys.exit(main())
