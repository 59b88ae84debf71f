"""Learner test fixtures (defined in learner_fixtures.py)."""

from learner_fixtures import start_learner, token_hashes_file

__all__ = ["start_learner", "token_hashes_file"]
