"""Importable ``module:callable`` candidates for tests/test_candidates.py."""
