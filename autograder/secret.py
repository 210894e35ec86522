"""The course secret: where the hidden checks' random inputs come from.

An instructor creates one secret per course offering (``autograder secret --out DIR`` writes
``DIR/grading-secret``, next to the gradebook) and keeps it out of the repository and the sandbox. Every hidden
check draws its inputs from a generator keyed by HMAC-SHA256(secret, lab + the submission's answer cells)
(:func:`draw_key`): regrading the same submission redraws the same inputs, any edited submission meets new
ones. Without a secret the grader refuses to grade for credit unless asked for ``--practice``, which uses the
public practice key (the inputs anyone can compute from the repository).

Where ``autograder grade`` looks, in order: ``--secret-file PATH``; the environment variable
``AUTOGRADER_SECRET`` (the secret itself); ``<out>/grading-secret``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ENV_VAR = "AUTOGRADER_SECRET"
FILE_NAME = "grading-secret"
#: Key of the public inputs (practice grading, ``autograder check``, nbgrader running the checks itself).
PRACTICE_KEY = hashlib.sha256(b"lowbit practice inputs v1").digest()
PRACTICE_NOTE = ("practice grading: the hidden checks used the public inputs (no course secret), "
                 "so this grade is not for credit")
MIN_LENGTH = 16


class SecretProblem(ValueError):
    """The course secret is missing or unusable; the message says what to do."""


def _checked(raw: bytes, where: str) -> bytes:
    value = raw.strip()
    if len(value) < MIN_LENGTH:
        raise SecretProblem(f"the course secret in {where} is {len(value)} bytes long; use at least {MIN_LENGTH} "
                            f"random bytes (`autograder secret --out DIR` writes one)")
    return value


def find_secret(out: Path, secret_file: Path | None = None) -> bytes | None:
    """The course secret from ``secret_file``, ``$AUTOGRADER_SECRET`` or ``<out>/grading-secret``; None if none."""
    if secret_file is not None:
        if not Path(secret_file).is_file():
            raise SecretProblem(f"--secret-file {secret_file} does not exist")
        return _checked(Path(secret_file).read_bytes(), str(secret_file))
    if os.environ.get(ENV_VAR):
        return _checked(os.environ[ENV_VAR].encode(), f"${ENV_VAR}")
    candidate = Path(out) / FILE_NAME
    if candidate.is_file():
        return _checked(candidate.read_bytes(), str(candidate))
    return None


def write_secret(out: Path) -> Path:
    """Create ``<out>/grading-secret`` (32 random bytes, hex, mode 0600); refuses to overwrite one."""
    path = Path(out) / FILE_NAME
    if path.exists():
        raise SecretProblem(f"{path} already exists; a course keeps one secret (delete it by hand to start over)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path


def submission_digest(lab: str, answers: list[tuple[str, str, str]]) -> bytes:
    """SHA-256 of the lab name and every answer cell (grade_id, type, source), in notebook order."""
    digest = hashlib.sha256(lab.encode() + b"\0")
    for grade_id, kind, source in answers:
        for part in (grade_id, kind, source):
            encoded = part.encode()
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.digest()


def draw_key(secret: bytes | None, lab: str, answers: list[tuple[str, str, str]]) -> bytes:
    """Key of one submission's hidden-check inputs: HMAC(secret, digest of its answers); practice key if no secret."""
    if secret is None:
        return PRACTICE_KEY
    return hmac.new(secret, submission_digest(lab, answers), hashlib.sha256).digest()


def fingerprint(secret: bytes | None) -> bytes:
    """What enters a lab's cache fingerprint: a one-way tag of the secret (never the secret itself)."""
    return b"practice" if secret is None else hmac.new(secret, b"lowbit cache tag", hashlib.sha256).digest()
