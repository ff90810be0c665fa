"""Developer sessions. Plain ``nox`` runs the gating ones: lint, typecheck, bench_quick, tests.

Every install goes through ``constraints.txt``, which pins every package's version, so a
new release of ruff, mypy or pytest cannot break CI on a day nothing changed.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "bench_quick", "tests"]  # tests last: its summary closes the log
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PINS = ("-c", "constraints.txt")
PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*PINS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, strict on the package and the tests (see pyproject.toml); benchmarks checked too."""
    session.install(*PINS, "-e", ".[fast,dev]")  # dev: mypy, and pytest and hypothesis, which the tests import
    session.run("mypy", "csce513msg", "tests", "benchmarks")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite on every backend (pass pytest arguments after --)."""
    session.install(*PINS, "-e", ".[fast,dev]")
    session.run("pytest", "--durations=15", *session.posargs)


@nox.session(python=PYTHONS)
def tests_pythons(session: nox.Session) -> None:
    """The suite on each supported Python (not gating: three times the time)."""
    session.install(*PINS, "-e", ".[fast,dev]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def bench_quick(session: nox.Session) -> None:
    """The quick benchmark (under 2 minutes), gating: it checks what must hold, not speed."""
    session.install(*PINS, "-e", ".[fast]")
    session.run("python", "-m", "benchmarks", "--quick", "--check", "--out", "bench-results", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite with plots: `nox -s bench -- --backends epoll,uvloop`."""
    session.install(*PINS, "-e", ".[fast,bench]")
    session.run("python", "-m", "benchmarks", "--out", "bench-results", *session.posargs)


@nox.session
def bench_transfer(session: nox.Session) -> None:
    """File transfer (1.6) against the raw socket copy, chat p99 beside it: `nox -s bench_transfer -- --size 100`."""
    session.install(*PINS, "-e", ".[fast]")
    session.run("python", "-m", "benchmarks.transfer", "--out", "bench-results/transfer.json", *session.posargs)


@nox.session
def bench_e2e(session: nox.Session) -> None:
    """End-to-end encryption's cost (1.7), the client's and the server's: `nox -s bench_e2e -- --quick`."""
    session.install(*PINS, "-e", ".[fast,dev]")  # dev: pytest, which the hot paths' helpers it reuses import
    session.run("python", "-m", "benchmarks.e2e", "--out", "bench-results/e2e.json", *session.posargs)
