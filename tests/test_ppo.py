"""PPO: GAE semantics, heads, one-compile sweeps, metrics, runner resume, NaN guard, learning."""

from __future__ import annotations

import json
import math

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

from tpfl_jax.accounting import train_info_metrics
from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.networks import (
    ActionSpec,
    Categorical,
    DiagGaussian,
    MultiDiscrete,
    action_spec,
    make_network,
)
from tpfl_jax.agents.ppo import (
    PPOAlgorithm,
    PPOConfig,
    compute_gae,
    ent_coef_now,
    make_ppo,
    make_train,
)
from tpfl_jax.agents.runner import NonFiniteError, Runner, read_metrics
from tpfl_jax.env.stats import EXIT_REASONS, TRADE_KEYS

TINY = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, update_epochs=2,
                 num_minibatches=2, widths=(16, 16))


# --------------------------------------------------------------------------- fake envs
@struct.dataclass
class ToyState(environment.EnvState):
    pos: jax.Array
    n_trades: jax.Array


@struct.dataclass
class ToyParams(environment.EnvParams):
    max_steps_in_episode: int = 12
    bonus: float = 1.0


class ToyTradeEnv(environment.Environment[ToyState, ToyParams]):
    """Emits the TradingEnv info contract: a trade closes every 3rd step."""

    def __init__(self, action_space=None):
        self._action_space = action_space or spaces.Discrete(3)

    @property
    def default_params(self) -> ToyParams:
        return ToyParams()

    def step_env(self, key, state, action, params):
        a = jnp.asarray(action, jnp.float32).sum()
        t = state.time + 1
        closed = (t % 3) == 0
        reason = jnp.where(a > 0.5, 1, 2).astype(jnp.int32)  # tp or sl
        trade = {k: jnp.zeros((), jnp.float32) for k in TRADE_KEYS}
        trade.update(closed=closed, exit_reason=jnp.where(closed, reason, 0),
                     hit=closed & (reason == 1), premature=jnp.asarray(False),
                     side=jnp.asarray(1, jnp.int32), tp_mult=jnp.asarray(1.5),
                     r_realised=jnp.where(reason == 1, 1.5, -1.0), pnl=jnp.asarray(2.0),
                     tp_zone_accuracy=jnp.where(reason == 1, 1.0, 0.3))
        reward = jnp.where(closed, params.bonus * trade["tp_zone_accuracy"], 0.0)
        state = ToyState(time=t, pos=state.pos + a, n_trades=state.n_trades + closed)
        info = {"trade": trade, "reward_terms": {"pnl": reward, "tp_bonus": reward * 0.5}}
        return self.get_obs(state), state, reward, jnp.asarray(False), info

    def reset_env(self, key, params):
        state = ToyState(time=0, pos=jnp.zeros(()), n_trades=jnp.zeros((), jnp.int32))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.stack([state.time / 12.0, state.pos / 10.0]).astype(jnp.float32)

    def action_space(self, params=None):
        return self._action_space

    def observation_space(self, params=None):
        return spaces.Box(-10.0, 10.0, (2,), jnp.float32)


# --------------------------------------------------------------------------- GAE
def test_gae_bootstraps_truncation_and_cuts_termination():
    g, lam = 0.9, 0.5
    r = jnp.array([1.0, 1.0, 1.0])
    v = jnp.array([0.5, 0.5, 0.5])
    nv = jnp.array([0.5, 10.0, 2.0])  # V(final_obs): step 1 ends an episode with V=10
    # case A: step 1 truncated -> bootstrap 10; recursion cut at step 1
    term = jnp.array([False, False, False])
    done = jnp.array([False, True, False])
    adv, tgt = compute_gae(r, v, nv, term, done, g, lam)
    d2 = 1 + g * 2.0 - 0.5
    d1 = 1 + g * 10.0 - 0.5
    d0 = 1 + g * 0.5 - 0.5
    np.testing.assert_allclose(adv, [d0 + g * lam * d1, d1, d2], rtol=1e-6)
    np.testing.assert_allclose(tgt, adv + v, rtol=1e-6)
    # case B: step 1 terminated -> no bootstrap
    adv_t, _ = compute_gae(r, v, nv, jnp.array([False, True, False]), done, g, lam)
    d1t = 1 - 0.5
    np.testing.assert_allclose(adv_t, [d0 + g * lam * d1t, d1t, d2], rtol=1e-6)
    assert adv[1] - adv_t[1] == pytest.approx(g * 10.0)


def test_entropy_annealing_is_linear_and_used_by_learn():
    """``anneal_ent`` scales the entropy bonus by 1 - update/num_updates, and ``learn`` uses it:
    at the end of the schedule (update ``num_updates``) an update equals one with ``ent_coef`` 0."""
    env, env_params = _cartpole()
    kw = dict(num_envs=4, num_steps=8, total_timesteps=4 * 8 * 4, num_minibatches=2,
              update_epochs=1, widths=(8,))
    ann = PPOConfig(**kw, anneal_ent=True, ent_coef=0.5)
    hp = ann.hparams()
    steps = jnp.arange(5)
    np.testing.assert_allclose(ent_coef_now(ann, hp, steps), 0.5 * (1 - steps / 4), rtol=1e-6)
    assert float(ent_coef_now(PPOConfig(**kw, ent_coef=0.5), hp, jnp.asarray(3))) == 0.5

    def learned(cfg):
        ppo = PPOAlgorithm(cfg, env, env_params)
        rs = ppo.init(jax.random.key(0), env_params)
        rs = rs.replace(update_step=jnp.asarray(4, jnp.int32))
        rs, traj = ppo.rollout(rs, env_params)
        return ppo.learn(rs, ppo.batch(rs, traj))[0]

    zero, plain = PPOConfig(**kw, ent_coef=0.0), PPOConfig(**kw, ent_coef=0.5)
    chex.assert_trees_all_close(learned(ann), learned(zero), rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(learned(plain))[0], jax.tree.leaves(learned(zero))[0])


# --------------------------------------------------------------------------- heads
def _cartpole():
    return gymnax.make("CartPole-v1")


def test_action_spec_kinds():
    assert action_spec(spaces.Discrete(5)) == ActionSpec("discrete", (5,))
    assert action_spec(MultiDiscrete([3, 4])) == ActionSpec("multidiscrete", (3, 4))
    tup = spaces.Tuple([spaces.Discrete(2), spaces.Discrete(6)])
    assert action_spec(tup) == ActionSpec("multidiscrete", (2, 6))
    assert action_spec(spaces.Box(-1.0, 1.0, (3,))) == ActionSpec("continuous", (3,))
    assert action_spec(spaces.Box(-1.0, 1.0, ())).scalar
    with pytest.raises(TypeError):
        action_spec(spaces.Box(-1.0, 1.0, (2, 2)))


@pytest.mark.parametrize("space,act_shape", [
    (spaces.Discrete(3), ()),
    (MultiDiscrete([3, 5]), (2,)),
    (spaces.Box(-2.0, 2.0, (2,)), (2,)),
])
@pytest.mark.parametrize("shared", [False, True])
def test_network_heads(space, act_shape, shared):
    env = ToyTradeEnv(space)
    net = make_network(env, env.default_params, (8, 8), "relu", shared)
    obs = jnp.ones((5, 2))
    params = net.init(jax.random.key(0), obs)
    dist, value = net.apply(params, obs)
    assert value.shape == (5,)
    a = dist.sample(jax.random.key(1))
    assert a.shape == (5, *act_shape)
    assert dist.log_prob(a).shape == (5,) and dist.entropy().shape == (5,)
    assert dist.mode().shape == (5, *act_shape)
    names = set(params["params"])
    assert ("torso" in names) == shared and ("actor_torso" in names) != shared


def test_distributions_match_closed_forms():
    c = Categorical(jnp.zeros((4,)))
    assert float(c.entropy()) == pytest.approx(math.log(4), rel=1e-6)
    assert float(c.log_prob(jnp.asarray(2))) == pytest.approx(-math.log(4), rel=1e-6)
    g = DiagGaussian(jnp.array([0.5, -1.0]), jnp.log(jnp.array([2.0, 0.5])))
    x = jnp.array([1.0, 0.0])
    ref = sum(-0.5 * ((xi - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
              for xi, m, s in [(1.0, 0.5, 2.0), (0.0, -1.0, 0.5)])
    assert float(g.log_prob(x)) == pytest.approx(ref, rel=1e-5)
    ref_h = sum(math.log(s) + 0.5 * (1 + math.log(2 * math.pi)) for s in (2.0, 0.5))
    assert float(g.entropy()) == pytest.approx(ref_h, rel=1e-5)
    samples = jax.vmap(g.sample)(jax.random.split(jax.random.key(0), 4000))
    np.testing.assert_allclose(samples.std(0), [2.0, 0.5], rtol=0.08)


# --------------------------------------------------------------------------- sweeps
def test_seed_x_envparams_sweep_compiles_once():
    env, ep = _cartpole()
    K, S = 3, 2
    eps = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * K), ep)
    eps = eps.replace(gravity=jnp.array([9.8, 5.0, 20.0]))
    train = chex.assert_max_traces(make_train(TINY, env), n=1)
    sweep = jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, 0)))
    rngs = jax.random.split(jax.random.key(0), S)
    out = sweep(rngs, eps)
    out2 = sweep(jax.random.split(jax.random.key(1), S), eps.replace(gravity=eps.gravity * 1.1))
    jax.block_until_ready(out2)
    for v in out.metrics.values():
        assert v.shape == (K, S, TINY.num_updates)
    p = jax.tree.leaves(out.params)[0]
    assert not jnp.array_equal(p[0, 0], p[0, 1])  # seeds differ
    assert not jnp.array_equal(p[0, 0], p[1, 0])  # env params differ
    assert bool(out.metrics["finite"].all())
    np.testing.assert_allclose(out.metrics["env_steps"][0, 0],
                               TINY.batch_size * np.arange(1, TINY.num_updates + 1))


def test_lr_sweep_vmaps_over_hparams():
    env, ep = _cartpole()
    ppo = make_ppo(TINY, env)
    hp = TINY.hparams()
    hps = jax.tree.map(lambda x: jnp.stack([x, x]), hp).replace(lr=jnp.array([0.0, 1e-3]))
    out = jax.jit(jax.vmap(ppo.train, (None, None, 0)))(jax.random.key(0), ep, hps)
    init = ppo.init(jax.random.key(0), ep)
    leaves0 = jax.tree.leaves(init.params)
    leaves = jax.tree.leaves(out.params)
    # lr 0 leaves the init untouched (up to jit-vs-eager rounding of the matmul init);
    # lr 1e-3 moves it far beyond that
    for a, b in zip(leaves0, leaves, strict=True):
        np.testing.assert_allclose(b[0], a, rtol=0, atol=1e-6)
    assert max(float(jnp.abs(a - b[1]).max()) for a, b in zip(leaves0, leaves, strict=True)) > 1e-4
    np.testing.assert_allclose(out.metrics["lr"][1], 1e-3 * (1 - np.arange(3) / 3), rtol=1e-6)


def test_trade_metrics_and_evaluate_trades():
    env = ToyTradeEnv()
    ep = env.default_params
    res = jax.jit(make_train(TINY, env, info_metrics=train_info_metrics))(jax.random.key(0), ep)
    m = res.metrics
    for k in ("trade/trades", "trade/hit_rate", "trade/mean_r", "trade/pnl",
              "reward_terms/pnl", "reward_terms/tp_bonus", "episode_return"):
        assert m[k].shape == (TINY.num_updates,), k
    # 4 envs; a trade closes at t = 3, 6, 9, 12 of 12-step episodes; 16 steps per update
    # -> per env 5, 5, 6 trades in updates 1, 2, 3
    np.testing.assert_array_equal(m["trade/trades"], [20, 20, 24])
    np.testing.assert_allclose(m["trade/pnl"], 2.0 * np.array([20, 20, 24]))
    ev = evaluate(res.params, env, ep, jax.random.key(3), n_episodes=6, config=TINY)
    assert ev.returns.shape == (6,) and np.all(ev.lengths == 12)
    df = ev.trades
    assert len(df) == 6 * 4
    assert set(TRADE_KEYS) <= set(df.columns)
    assert set(df["exit_reason"]) <= set(EXIT_REASONS[1:3])
    # episode return = sum of the closing-step rewards of its trades
    per_ep = df.groupby("episode")["tp_zone_accuracy"].sum().to_numpy()
    np.testing.assert_allclose(per_ep, ev.returns, rtol=1e-5)


def test_continuous_head_with_normalisation_trains_finite():
    env, ep = gymnax.make("Pendulum-v1")
    cfg = PPOConfig(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 3, update_epochs=2,
                    num_minibatches=2, widths=(16, 16), normalize_obs=True,
                    normalize_reward=True)
    res = jax.jit(make_train(cfg, env))(jax.random.key(0), ep)
    assert bool(res.metrics["finite"].all())
    rs = res.runner_state
    assert float(rs.obs_rms.count) > 4 * 32 * 3  # updated every step
    assert float(rs.ret_rms.var) != 1.0
    ev = evaluate(res.params, env, ep, jax.random.key(1), 3, config=cfg, obs_rms=rs.obs_rms)
    assert ev.returns.shape == (3,) and np.all(ev.lengths == 200)


# --------------------------------------------------------------------------- runner
def test_runner_resume_is_bit_exact(tmp_path):
    env, ep = _cartpole()
    cfg = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 6, update_epochs=2,
                    num_minibatches=2, widths=(16, 16))
    kw = dict(chunk_updates=2, checkpoint_every=2, progress=False)
    full = Runner(cfg, env, ep, tmp_path / "a", **kw).run()
    part = Runner(cfg, env, ep, tmp_path / "b", **kw).run(until=4)  # "killed" after 2 chunks
    assert part.start_update == 0
    resumed = Runner(cfg, env, ep, tmp_path / "b", **kw).run()
    assert resumed.start_update == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), strict=True):
        assert jnp.array_equal(a, b)
    assert jnp.array_equal(jax.random.key_data(full.runner_state.rng),
                           jax.random.key_data(resumed.runner_state.rng))
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == list(range(1, 7))
    df = read_metrics(tmp_path / "a")
    assert len(df) == 6 and "episode_return" in df
    # the uninterrupted runner and a single jitted train agree
    ref = jax.jit(make_train(cfg, env))(jax.random.key(0), ep)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_runner_vmapped_seeds(tmp_path):
    env, ep = _cartpole()
    res = Runner(TINY, env, ep, tmp_path, num_seeds=2, chunk_updates=3, checkpoint_every=3,
                 progress=False).run()
    assert res.metrics["loss"].shape == (TINY.num_updates, 2)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert len(row["loss"]) == 2


def test_nan_guard_names_update(tmp_path):
    env, ep = _cartpole()
    hp = TINY.hparams().replace(lr=jnp.asarray(jnp.nan))
    runner = Runner(TINY, env, ep, tmp_path, hparams=hp, chunk_updates=3, checkpoint_every=3,
                    progress=False)
    with pytest.raises(NonFiniteError, match="update 1") as exc:
        runner.run()
    assert exc.value.update == 1
    assert runner.manager.latest_step() is None


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_cartpole_short_budget_beats_random():
    env, ep = _cartpole()
    cfg = PPOConfig(total_timesteps=80_000)
    out = jax.jit(jax.vmap(make_train(cfg, env), (0, None)))(
        jax.random.split(jax.random.key(42), 2), ep)
    trained = float(np.nanmean(np.asarray(out.metrics["episode_return"])[:, -10:]))
    params0 = jax.tree.map(lambda x: x[0], out.params)
    ev = evaluate(params0, env, ep, jax.random.key(7), 16, config=cfg)
    # uniformly random CartPole policy: ~22 steps per episode
    assert trained > 120.0, trained
    assert ev.returns.mean() > 120.0, ev.returns


def test_orthogonal_init_is_orthogonal_and_scaled():
    from tpfl_jax.agents.networks import orthogonal_init

    for shape in [(64, 64), (26, 64), (64, 11)]:
        q = np.asarray(orthogonal_init(np.sqrt(2.0))(jax.random.key(0), shape)) / np.sqrt(2.0)
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)
    a = orthogonal_init()(jax.random.key(1), (8, 8))
    b = orthogonal_init()(jax.random.key(2), (8, 8))
    assert not np.allclose(a, b)


def test_wide_seed_vmap_finishes():
    """Regression: vmapping train over many seeds used to deadlock XLA's CPU thread pool in
    the LAPACK QR of flax's orthogonal init. Run in a subprocess so a hang fails, not blocks."""
    import subprocess
    import sys

    code = (
        "import jax, gymnax\n"
        "from tpfl_jax.agents.ppo import PPOConfig, make_train\n"
        "env, p = gymnax.make('CartPole-v1')\n"
        "cfg = PPOConfig(num_envs=4, num_steps=16, total_timesteps=128, widths=(16, 16),"
        " update_epochs=1, num_minibatches=2)\n"
        "f = jax.jit(jax.vmap(make_train(cfg, env, p), (0, None)))\n"
        "r = jax.block_until_ready(f(jax.random.split(jax.random.key(0), 16), p))\n"
        "print('ok', r.metrics['loss'].shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok (16, 2)" in out.stdout
