"""Continuous-learning manager: models, weight policies, registry, orchestrator."""
