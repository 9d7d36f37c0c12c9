"""Benchmarks: suites, grading, a crash-safe runner, failure classes, run comparison, explorer."""

from mimo_lab.bench.compare import compare_runs
from mimo_lab.bench.failures import CATEGORIES, classify
from mimo_lab.bench.grade import grade
from mimo_lab.bench.run import Run, run
from mimo_lab.bench.suites import BenchProblem, Suite, load_suite, nano_suite

__all__ = ["run", "Run", "Suite", "BenchProblem", "load_suite", "nano_suite", "grade", "classify", "CATEGORIES",
           "compare_runs"]
