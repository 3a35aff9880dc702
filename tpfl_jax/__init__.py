"""tpfl_jax: the TP feedback loop for JAX RL trading agents."""

from tpfl_jax.reward import RewardCoefs, compute_reward, reward_terms

__all__ = ["RewardCoefs", "compute_reward", "reward_terms"]
__version__ = "0.1.0"
