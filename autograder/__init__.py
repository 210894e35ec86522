"""The lowbit autograder: release, sandboxed grading, feedback and gradebook (see autograder/README.md)."""
import sys

# nbformat validates notebooks with jsonschema and no format checker, but importing jsonschema imports its
# optional 'iri' format checker's dependency, rfc3987_syntax, which compiles an RFC 3987 grammar at import:
# 1.4 s in every grading process (the command, each pool worker, each Dask task's process). Nothing the grader
# validates has an 'iri' format, so a process that imports the autograder before jsonschema goes without it
# (jsonschema treats the module as absent and checks 'iri' strings as any string).
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)
