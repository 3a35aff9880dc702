"""Resource estimates made before anything compiles: the device memory a run needs (refused
when it cannot fit) and an order-of-magnitude wall time from recorded throughput."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax

from tpfl_jax.config_checks import ConfigError
from tpfl_jax.guard import GuardSection


def estimate_footprint(ppo: Any, obs_size: int, n_agents: int, *, n_actions: int = 16,
                       market_cells_per_agent: int = 0, substeps: int = 1,
                       shared_market_cells: int = 0, deploy_envs: int = 0,
                       keep_trade_cells: int = 0, curve_cells_per_agent: int = 0
                       ) -> dict[str, int]:
    """Lower-bound bytes a run holds at once, by component (and ``total``).

    Per agent: the network's parameters with their gradient, Adam moments and one copy; the
    rollout of ``num_envs x num_steps`` transitions (observation twice, ~35
    scalars of actions, values, rewards and trade records), the update batch and its shuffled
    copy, the minibatch activations; synthetic markets generated per agent (``market_cells``
    bars with ``substeps`` intrabar draws), kept deploy trades and per-update metric curves
    (``curve_cells_per_agent`` = updates x cycles x metrics). Shared: one market.
    """
    f32 = 4
    transitions = ppo.num_envs * ppo.num_steps
    per_t = 2 * obs_size + 35 + 2 * (obs_size + 5)
    width = sum(ppo.widths) * (1 if ppo.shared_torso else 2)
    act = ppo.num_envs * ppo.num_steps // max(ppo.num_minibatches, 1) * (
        obs_size + 2 * width + n_actions) * 3
    market = market_cells_per_agent * (4 * substeps + 20)
    deploy = deploy_envs * (2 * obs_size + 40) + keep_trade_cells * 20
    layers = [obs_size, *ppo.widths]
    torso = sum(a * b + b for a, b in zip(layers, layers[1:], strict=False))
    heads = ppo.widths[-1] * (n_actions + 1) + n_actions + 1
    n_params = torso * (1 if ppo.shared_torso else 2) + heads
    comp = {
        # parameters, their gradient and Adam's two moments (and a copy for the warm start)
        "network_and_optimizer": n_agents * n_params * 5 * f32,
        "rollout_and_batch": n_agents * transitions * per_t * f32,
        "activations": n_agents * act * f32,
        "markets": n_agents * market * f32 + shared_market_cells * 12 * f32,
        "deploy": n_agents * deploy * f32,
        "metric_curves": n_agents * curve_cells_per_agent * f32,
    }
    comp["total"] = sum(comp.values())
    return comp


def device_memory_bytes() -> tuple[int, int, str]:
    """(bytes per device, number of devices, platform); CPU devices share the host's RAM."""
    devs = jax.local_devices()
    plat = devs[0].platform
    if plat == "cpu":
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = 0
        return int(ram), 1, plat             # one pool shared by every CPU device
    limit = 0
    try:
        limit = int((devs[0].memory_stats() or {}).get("bytes_limit", 0))
    except Exception:  # noqa: BLE001 - backends without memory stats: no limit known
        limit = 0
    return limit, len(devs), plat


def memory_per_device(footprint: Mapping[str, int], n_agents: int,
                      guard: GuardSection | None) -> tuple[int, int, str, str, int]:
    """(estimated bytes per device, the limit in bytes (0: unknown), its text, the platform,
    the number of devices) of a footprint spread over the local devices."""
    limit, n_dev, plat = device_memory_bytes()
    limit_text = f"{limit / 2**30:.3g} GiB"
    if guard is not None and guard.max_memory_gb is not None:
        limit = int(guard.max_memory_gb * 2**30)
        limit_text = f"{guard.max_memory_gb:g} GiB (guard.max_memory_gb)"
    total = footprint["total"]
    per_dev = total if n_dev <= 1 else math.ceil(total * math.ceil(n_agents / n_dev)
                                                  / max(n_agents, 1))
    return per_dev, limit, limit_text, plat, n_dev


def check_memory(footprint: Mapping[str, int], n_agents: int, guard: GuardSection | None,
                 what: str) -> None:
    """Refuse (``ConfigError``) when the estimated footprint cannot fit in memory."""
    per_dev, limit, limit_text, plat, n_dev = memory_per_device(footprint, n_agents, guard)
    if 0 < limit < per_dev:
        parts = ", ".join(f"{k} {v / 2**30:.3g} GiB" for k, v in footprint.items()
                          if k != "total" and v)
        raise ConfigError(
            f"{what}: needs at least {per_dev / 2**30:.3g} GiB per {plat} device ({parts}; "
            f"{n_agents} agent(s) over {n_dev} device(s)) but {limit_text} is "
            "available; reduce ppo.num_envs / ppo.num_steps / ppo.total_timesteps, the number "
            "of seeds or policies/weights, or market sizes (guard.max_memory_gb sets the "
            "limit)")


def run_footprint(c: Any, ppo: Any, command: str, n_agents: int, *, obs_size: int,
                  n_actions: int, cycles: int = 1, deploy_envs: int = 0,
                  keep_trades: bool = False, curve_metrics: int = 40) -> dict[str, int]:
    """``estimate_footprint`` of an app's config (``command``: loop or train)."""
    m = c.market
    per_agent_market = shared = 0
    substeps = 1
    if m.source == "synthetic":
        cells = (m.train_paths + m.deploy_paths) * m.n_bars
        substeps = m.substeps
        if command == "loop":
            per_agent_market = cells          # every policy x seed generates its markets
        else:
            shared = cells * (4 * substeps + 20) // 12
    steps = int(c.env.max_steps_in_episode)
    return estimate_footprint(
        ppo, obs_size, n_agents, n_actions=n_actions,
        market_cells_per_agent=per_agent_market, substeps=substeps,
        shared_market_cells=shared, deploy_envs=deploy_envs,
        keep_trade_cells=cycles * steps * deploy_envs if keep_trades else 0,
        curve_cells_per_agent=ppo.num_updates * cycles * curve_metrics)


def check_run_memory(c: Any, ppo: Any, command: str, n_agents: int, **kwargs: Any
                     ) -> dict[str, int]:
    """:func:`run_footprint` refused by ``check_memory`` when it cannot fit; returns it."""
    fp = run_footprint(c, ppo, command, n_agents, **kwargs)
    check_memory(fp, n_agents, c.guard, f"tpfl-{command}")
    return fp


def memory_line(footprint: Mapping[str, int], n_agents: int, guard: GuardSection | None
                ) -> str:
    """The estimated memory per device against the limit, for a run plan."""
    per_dev, limit, limit_text, plat, _ = memory_per_device(footprint, n_agents, guard)
    lim = f"of {limit_text} available" if limit > 0 else "(no limit known)"
    return (f"memory: >= {per_dev / 2**30:.3g} GiB per {plat} device {lim} (lower-bound "
            "estimate)")


# --------------------------------------------------------------------------- wall time
# Recorded throughput of tpfl_jax's training programs (env steps per second, all agents of a
# program together) and a typical cold compile, per platform: benchmarks/README.md.
RECORDED_THROUGHPUT: dict[str, tuple[float, float, str]] = {
    "cpu": (2.9e5, 30.0, "a 2-core CPU: experiment=study, 252M env steps in ~14.5 min per "
                         "market (2026-11-30)"),
    "gpu": (2.8e7, 30.0, "one H100: experiment=study_gpu, ~28M env-steps/s (2026-11-27)"),
}


def wall_time_estimate(env_steps: int, platform: str | None = None) -> str:
    """An order-of-magnitude wall time for ``env_steps`` of PPO training on this machine's
    platform, from :data:`RECORDED_THROUGHPUT` (stated as an estimate, with its source)."""
    plat = platform or jax.default_backend()
    if plat not in RECORDED_THROUGHPUT:
        return f"no recorded throughput for platform {plat!r}"
    rate, compile_s, source = RECORDED_THROUGHPUT[plat]
    secs = compile_s + env_steps / rate
    text = f"{secs:.0f} s" if secs < 120 else (f"{secs / 60:.0f} min" if secs < 7200
                                               else f"{secs / 3600:.1f} h")
    return (f"~{text} (order-of-magnitude estimate: {env_steps:,} env steps at "
            f"{rate:,.0f}/s plus ~{compile_s:.0f} s compile, the throughput recorded on "
            f"{source})")
