"""Flax actor-critic networks and PPO."""
