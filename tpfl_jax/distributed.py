"""Lay a batch of configurations on a device mesh: one code path from 1 CPU to N GPUs/TPU cores.

A *batch* is any pytree whose leaves share leading axes that index independent configurations
(seeds x weights x policies, flattened or as several named leading axes). :class:`MeshConfig`
(frozen, built by the Hydra layer) says how the devices form a ``jax.sharding.Mesh`` and which
batch axes are split over which mesh axes; everything else is ``jax.jit`` with ``NamedSharding``
(GSPMD), never ``pmap``:

* :func:`make_mesh` -- the mesh of ``cfg`` (``-1`` in the shape = all remaining devices);
* :func:`shard_batch` -- put a batch pytree on the mesh (leading axes split per ``cfg.batch_spec``);
* :func:`sharded_vmap` -- ``jit(vmap(fn))`` with the vmapped axis sharded over the mesh and the
  unbatched arguments replicated; outputs come back sharded the same way;
* :func:`gather` -- outputs to host numpy (all-gathered across processes when multi-host);
* :func:`init_distributed` -- ``jax.distributed.initialize()`` from config / env vars, a no-op
  for a single process;

The PPO and loop sweeps built on these live above the loop, in :mod:`tpfl_jax.sweeps`.

The Hydra apps read :class:`MeshConfig` from the ``mesh`` config group (``mesh=default``: every
device on one axis; ``mesh=multihost``: a ``[hosts, devices]`` mesh) and call
:func:`init_distributed` first, so the same command runs on 1 CPU, N GPUs or several hosts.

Batches that do not divide the mesh: with ``on_indivisible="error"`` (default) a ``ValueError``
names the batch size and the mesh axes; with ``"pad"`` the batch is padded at the end with copies
of its last element up to the next multiple, run, and the padding is sliced off the outputs (the
padded rows cost compute but never reach the caller; they must be safe to run, which copies are).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AxisSpec = str | tuple[str, ...] | None

ENV_COORDINATOR = "TPFL_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "TPFL_NUM_PROCESSES"
ENV_PROCESS_ID = "TPFL_PROCESS_ID"


@dataclass(frozen=True)
class MeshConfig:
    """How the devices form a mesh and how a batch is laid on it.

    shape:           mesh shape; at most one ``-1`` (= all remaining devices). ``(-1,)`` uses
                     every device on one axis. A mesh smaller than the device count uses the
                     first ``prod(shape)`` devices.
    axis_names:      one name per mesh axis.
    batch_spec:      one entry per leading batch axis: the mesh axis (or tuple of mesh axes) it
                     is split over, or None (replicated). ``("batch",)`` splits axis 0 over the
                     mesh axis ``"batch"``; ``(None, "batch")`` splits axis 1 (e.g. the weights
                     of a ``[S, K]`` batch).
    on_indivisible:  ``"error"`` (ValueError naming the sizes) or ``"pad"`` (pad + unpad; only
                     :func:`sharded_vmap` and :func:`pad_batch` pad).
    coordinator_address, num_processes, process_id, local_device_ids: multi-host settings for
                     :func:`init_distributed`; None falls back to the ``TPFL_*`` env vars.
    auto_detect:     with no process count anywhere, let JAX detect the cluster when an
                     ``srun`` step or Open MPI job has several tasks (:func:`cluster_says_multi`).
    """

    shape: tuple[int, ...] = (-1,)
    axis_names: tuple[str, ...] = ("batch",)
    batch_spec: tuple[AxisSpec, ...] = ("batch",)
    on_indivisible: Literal["error", "pad"] = "pad"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    auto_detect: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "axis_names", tuple(str(a) for a in self.axis_names))
        object.__setattr__(self, "batch_spec", tuple(
            tuple(e) if isinstance(e, list | tuple) else e for e in self.batch_spec))
        if self.local_device_ids is not None:
            object.__setattr__(self, "local_device_ids",
                               tuple(int(i) for i in self.local_device_ids))
        if len(self.shape) != len(self.axis_names):
            raise ValueError(f"MeshConfig: shape {self.shape} has {len(self.shape)} axes but "
                             f"axis_names {self.axis_names} has {len(self.axis_names)}")
        if len(set(self.axis_names)) != len(self.axis_names):
            raise ValueError(f"MeshConfig.axis_names: duplicate names in {self.axis_names}")
        if sum(s == -1 for s in self.shape) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ValueError(f"MeshConfig.shape: expected positive sizes and at most one -1, "
                             f"got {self.shape}")
        used: list[str] = []
        for e in self.batch_spec:
            for a in _axes(e):
                if a not in self.axis_names:
                    raise ValueError(f"MeshConfig.batch_spec: unknown mesh axis {a!r}; "
                                     f"axis_names are {self.axis_names}")
                used.append(a)
        if len(set(used)) != len(used):
            raise ValueError(f"MeshConfig.batch_spec: a mesh axis is used twice in "
                             f"{self.batch_spec}")
        if self.on_indivisible not in ("error", "pad"):
            raise ValueError(f"MeshConfig.on_indivisible: expected 'error' or 'pad', "
                             f"got {self.on_indivisible!r}")

    @classmethod
    def from_dict(cls, d: Any) -> MeshConfig:
        """From a plain mapping (e.g. ``OmegaConf.to_object(cfg.mesh)``); lists become tuples."""
        d = dict(d)
        for k in ("shape", "axis_names", "batch_spec", "local_device_ids"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# XLA:CPU's LLVM at optimisation level 2 instead of its default 3: the closed loop compiles in
# ~12 s instead of ~17 s on a 2-core CPU, and runs as fast (benchmarks/README.md). Other
# backends keep their defaults.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def compiler_options() -> dict[str, int] | None:
    """The XLA options tpfl_jax's programs compile with on the default backend (None: XLA's
    defaults; ``TPFL_XLA_DEFAULTS=1`` forces those)."""
    if jax.default_backend() != "cpu" or os.environ.get("TPFL_XLA_DEFAULTS") == "1":
        return None
    return dict(CPU_COMPILER_OPTIONS)


def jit(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``jax.jit`` with :func:`compiler_options`."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


def _axes(entry: AxisSpec) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


# --------------------------------------------------------------------------- mesh
def make_mesh(cfg: MeshConfig | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``Mesh`` of ``cfg`` over ``devices`` (default: all global devices)."""
    cfg = MeshConfig() if cfg is None else cfg
    devices = list(jax.devices() if devices is None else devices)
    known = math.prod(s for s in cfg.shape if s != -1)
    if -1 in cfg.shape:
        if len(devices) % known:
            raise ValueError(f"MeshConfig.shape {cfg.shape}: {len(devices)} devices are not "
                             f"divisible by the fixed axes' product {known}")
        shape = tuple(len(devices) // known if s == -1 else s for s in cfg.shape)
    else:
        shape = cfg.shape
    n = math.prod(shape)
    if n > len(devices):
        raise ValueError(f"MeshConfig.shape {cfg.shape} needs {n} devices; only "
                         f"{len(devices)} available ({devices[0].platform})")
    dev = np.asarray(devices[:n], dtype=object).reshape(shape)
    return Mesh(dev, cfg.axis_names,
                axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def axis_size(mesh: Mesh, entry: AxisSpec) -> int:
    """Number of shards a batch axis gets from ``entry`` (product of its mesh axes' sizes)."""
    return math.prod(mesh.shape[a] for a in _axes(entry))


def batch_sharding(mesh: Mesh, batch_spec: Sequence[AxisSpec] = ("batch",),
                   offset: int = 0) -> NamedSharding:
    """``NamedSharding`` splitting leading axes ``offset..`` per ``batch_spec``; rest replicated."""
    return NamedSharding(mesh, PartitionSpec(*([None] * offset), *batch_spec))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value."""
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(tree: Any, mesh: Mesh, batch_spec: Sequence[AxisSpec] = ("batch",),
                    offset: int = 0) -> None:
    """Raise ``ValueError`` naming the sizes when a batch axis does not divide its mesh axes."""
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        shape = np.shape(x)
        name = jax.tree_util.keystr(path) or "<root>"
        for i, entry in enumerate(batch_spec):
            d = axis_size(mesh, entry)
            ax = offset + i
            if d == 1:
                continue
            if len(shape) <= ax:
                raise ValueError(f"batch leaf {name} has shape {shape}: "
                                 f"no axis {ax} to split over mesh axes {_axes(entry)}")
            if shape[ax] % d:
                raise ValueError(
                    f"batch axis {ax} of size {shape[ax]} (leaf {name}) "
                    f"does not divide over mesh axes {_axes(entry)} of size {d} "
                    f"(mesh {dict(mesh.shape)}); use a multiple of {d} or pad "
                    f"(MeshConfig(on_indivisible='pad'); Hydra: mesh.on_indivisible=pad)")


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _on_key_data(fn: Callable[[Any], Any], x: jax.Array) -> jax.Array:
    """``fn`` applied to the raw data of typed keys ``x`` (numpy cannot hold keys), re-wrapped."""
    return jax.random.wrap_key_data(fn(jax.random.key_data(x)), impl=jax.random.key_impl(x))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # multi-host: every process holds the same global value; each fills its own shards
    if _is_key(x):   # the key data has one more trailing axis, left unsplit
        spec = PartitionSpec(*sharding.spec, *([None] * (x.ndim + 1 - len(sharding.spec))))
        return _on_key_data(lambda d: _put(d, NamedSharding(sharding.mesh, spec)), x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(tree: Any, mesh: Mesh, batch_spec: Sequence[AxisSpec] = ("batch",),
                offset: int = 0) -> Any:
    """Place every leaf of ``tree`` on ``mesh`` with its leading axes split per ``batch_spec``.

    Raises ``ValueError`` naming the sizes when an axis does not divide (see :func:`pad_batch`).
    """
    check_divisible(tree, mesh, batch_spec, offset)
    sh = batch_sharding(mesh, batch_spec, offset)
    return jax.tree.map(lambda x: _put(x, sh), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` whole on every device of ``mesh``."""
    sh = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, sh), tree)


def pad_batch(tree: Any, multiple: int, axis: int = 0) -> tuple[Any, int]:
    """Pad ``axis`` of every leaf to a multiple of ``multiple`` with copies of its last element.

    Returns ``(padded, n)`` with ``n`` the original size; undo with :func:`unpad_batch`.
    """
    sizes = {np.shape(x)[axis] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"pad_batch: leaves disagree on the size of axis {axis}: {sorted(sizes)}")
    n = sizes.pop()
    extra = -n % multiple
    if extra == 0:
        return tree, n

    def pad(x):
        last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
        reps = [1] * np.ndim(x)
        reps[axis] = extra
        return jnp.concatenate([x, jnp.tile(last, reps)], axis=axis)

    return jax.tree.map(pad, tree), n


def unpad_batch(tree: Any, n: int, axis: int = 0) -> Any:
    """First ``n`` entries of ``axis`` of every leaf."""
    return tree_apply(lambda x: jax.lax.slice_in_dim(x, 0, n, axis=axis), tree)


def _replicated_like(x: jax.Array) -> NamedSharding:
    """A fully replicated sharding over the devices that hold ``x``."""
    if isinstance(x.sharding, NamedSharding):
        return NamedSharding(x.sharding.mesh, PartitionSpec())
    devs = sorted(x.sharding.device_set, key=lambda d: d.id)
    return NamedSharding(Mesh(np.array(devs), ("all",)), PartitionSpec())


def tree_apply(fn: Callable[[jax.Array], jax.Array], tree: Any) -> Any:
    """``jax.tree.map(fn, tree)`` as ONE compiled program.

    Eager ``tree.map`` over sharded multi-process arrays dispatches one program per leaf; their
    collectives are independent, so two processes may run them in different orders and
    deadlock (seen with CPU/Gloo). One program has one collective schedule.
    """
    return jax.jit(lambda t: jax.tree.map(fn, t))(tree)


def gather(tree: Any) -> Any:
    """Host copy of a (possibly multi-host) sharded pytree: numpy arrays; typed PRNG keys stay
    key arrays (on the local default device).

    Multi-host: every process calls it; the leaves sharded across processes are replicated by
    ONE compiled identity program (one collective schedule, so no process can wait on a
    different all-gather than the others), entered together after a coordination barrier.
    Leaves every process holds whole (replicated, or host values) are copied locally.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    keys = [_is_key(x) for x in leaves]
    data = [jax.random.key_data(x) if k else x for x, k in zip(leaves, keys, strict=True)]
    glob = [i for i, x in enumerate(data)
            if isinstance(x, jax.Array) and not x.is_fully_addressable]
    out: list[Any] = [None] * len(data)
    if glob:
        shardings = tuple(_replicated_like(data[i]) for i in glob)
        sync_processes("gather")   # enter together: Gloo's context setup waits only 30 s
        rep = jax.jit(lambda *xs: xs, out_shardings=shardings)(*(data[i] for i in glob))
        for i, x in zip(glob, rep, strict=True):
            out[i] = np.asarray(x.addressable_data(0))
    for i, x in enumerate(data):
        if out[i] is None:
            out[i] = np.asarray(jax.device_get(x))
    out = [jax.random.wrap_key_data(x, impl=jax.random.key_impl(leaf)) if k else x
           for x, leaf, k in zip(out, leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------- sharded vmap
def sharded_vmap(fn: Callable[..., Any], mesh: Mesh, in_axes: int | None | Sequence[int | None] = 0,
                 out_axes: int = 0, *, axis: AxisSpec = "batch",
                 on_indivisible: Literal["error", "pad"] = "pad") -> Callable[..., Any]:
    """``jit(vmap(fn, in_axes, out_axes))`` with the vmapped axis sharded over ``axis`` of ``mesh``.

    ``in_axes`` is one entry per positional argument (an int: that axis of every leaf is the
    batch axis and is split over the mesh; None: the argument is replicated, e.g. market data or
    static-shaped params shared by every configuration). Outputs are returned with their batch
    axis (``out_axes``) split the same way. The function is compiled once per input shape;
    ``on_indivisible`` as in :class:`MeshConfig`. ``call.aot(*args)`` places the arguments and
    compiles ahead of time (to time compilation apart), returning ``run()``.
    """
    spec = (axis,)
    n_shards = axis_size(mesh, axis)

    def prepare(*args: Any) -> tuple[tuple[int | None, ...], list[Any], int, bool]:
        axes = [in_axes] * len(args) if not isinstance(in_axes, Sequence) else list(in_axes)
        if len(axes) != len(args):
            raise ValueError(f"sharded_vmap: {len(args)} arguments but in_axes={in_axes}")
        sizes = {np.shape(x)[a] for arg, a in zip(args, axes, strict=True) if a is not None
                 for x in jax.tree.leaves(arg)}
        if len(sizes) != 1:
            raise ValueError(f"sharded_vmap: batched arguments disagree on the batch size: "
                             f"{sorted(sizes)}")
        n = sizes.pop()
        pad = n % n_shards != 0
        if pad and on_indivisible == "error":
            raise ValueError(
                f"batch of {n} configurations does not divide over mesh axes {_axes(axis)} of "
                f"size {n_shards} (mesh {dict(mesh.shape)}); use a multiple of {n_shards} or "
                f"on_indivisible='pad' (Hydra: mesh.on_indivisible=pad)")
        placed = []
        for arg, a in zip(args, axes, strict=True):
            if a is None:
                placed.append(replicate(arg, mesh))
                continue
            if pad:
                arg, _ = pad_batch(arg, n_shards, a)
            placed.append(shard_batch(arg, mesh, spec, offset=a))
        return tuple(axes), placed, n, pad

    def call(*args: Any) -> Any:
        axes, placed, n, pad = prepare(*args)
        out = _compiled(axes)(*placed)
        return unpad_batch(out, n, out_axes) if pad else out

    def aot(*args: Any) -> Callable[[], Any]:
        """Place ``args`` and compile now; the returned ``run()`` executes (and unpads)."""
        axes, placed, n, pad = prepare(*args)
        compiled = _compiled(axes).lower(*placed).compile()

        def run() -> Any:
            out = compiled(*placed)
            return unpad_batch(out, n, out_axes) if pad else out

        return run

    cache: dict[tuple[int | None, ...], Callable[..., Any]] = {}

    def _compiled(axes: tuple[int | None, ...]) -> Callable[..., Any]:
        if axes not in cache:
            in_sh = tuple(replicated(mesh) if a is None else batch_sharding(mesh, spec, a)
                          for a in axes)
            cache[axes] = jit(jax.vmap(fn, in_axes=axes, out_axes=out_axes),
                                  in_shardings=in_sh,
                                  out_shardings=batch_sharding(mesh, spec, out_axes))
        return cache[axes]

    call.compiled = _compiled  # type: ignore[attr-defined]
    call.aot = aot  # type: ignore[attr-defined]
    return call


# --------------------------------------------------------------------------- multi-host
def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"env var {name}={v!r}: expected an integer") from None


def cluster_says_multi() -> bool:
    """True inside an ``srun`` step or ``mpirun`` (Open MPI) job of several tasks.

    ``SLURM_STEP_NUM_TASKS`` (set per ``srun`` step), not ``SLURM_NTASKS`` (set for the whole
    allocation, also in a plain ``sbatch`` script where only one process runs).
    """
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        v = os.environ.get(var)
        if v and v.isdigit() and int(v) > 1:
            return True
    return False


def requested_processes(cfg: MeshConfig | None = None) -> int | None:
    """The process count set by ``cfg.num_processes`` or ``TPFL_NUM_PROCESSES`` (None: unset)."""
    if cfg is not None and cfg.num_processes is not None:
        return cfg.num_processes
    return _env_int(ENV_NUM_PROCESSES)


def is_multi_process(cfg: MeshConfig | None = None) -> bool:
    """Whether this is one process of several: a count above 1 (:func:`requested_processes`)
    or an ``srun`` / ``mpirun`` step of several tasks (:func:`cluster_says_multi`)."""
    n = requested_processes(cfg)
    return (n is not None and n > 1) or cluster_says_multi()


def init_distributed(cfg: MeshConfig | None = None) -> bool:
    """Start ``jax.distributed`` when this is one process of several; return whether it did.

    Settings come from ``cfg`` or else the env vars ``TPFL_COORDINATOR_ADDRESS`` (host:port of
    process 0), ``TPFL_NUM_PROCESSES`` and ``TPFL_PROCESS_ID``. One process (no count, or a
    count of 1) is a no-op. With no count anywhere and ``cfg.auto_detect``, an ``srun`` step or
    Open MPI job of several tasks (:func:`cluster_says_multi`) calls
    ``jax.distributed.initialize()`` with JAX's cluster detection. With one process per GPU and
    settings from the env vars, give each process its GPU (``local_device_ids`` or
    ``CUDA_VISIBLE_DEVICES``); SLURM detection does that itself. Must run before anything
    starts the XLA backend; a second call is a no-op.
    """
    cfg = MeshConfig() if cfg is None else cfg
    if jax.distributed.is_initialized():
        return True
    addr = cfg.coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    n = requested_processes(cfg)
    pid = cfg.process_id if cfg.process_id is not None else _env_int(ENV_PROCESS_ID)
    if n is None:
        if cfg.auto_detect and cluster_says_multi():
            jax.distributed.initialize(coordinator_address=addr,
                                       local_device_ids=cfg.local_device_ids)
            return True
        return False
    if n < 1:
        raise ValueError(f"mesh.num_processes / {ENV_NUM_PROCESSES}: expected >= 1, got {n}")
    if n == 1:
        return False
    missing = [name for name, v in (("coordinator_address / " + ENV_COORDINATOR, addr),
                                    ("process_id / " + ENV_PROCESS_ID, pid)) if v is None]
    if missing:
        raise ValueError(f"init_distributed: {n} processes requested but {missing} not set")
    if not 0 <= pid < n:
        raise ValueError(f"mesh.process_id / {ENV_PROCESS_ID}: expected 0 <= process_id < {n}, "
                         f"got {pid}")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid,
                               local_device_ids=cfg.local_device_ids)
    return True


# --------------------------------------------------------------------------- PPO sweep
SYNC_TIMEOUT_S = 4 * 3600
_barrier_count = itertools.count()


def sync_processes(name: str, timeout_s: float = SYNC_TIMEOUT_S) -> None:
    """Barrier over every process (no-op for one process): call it where all processes pass.

    Waits on the coordination service (no device collective), so one process may spend up to
    ``timeout_s`` alone (process 0 writing the report and the reward audit) while the others
    wait; a device collective would fail after Gloo's 30 s context timeout instead.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as _jd  # the documented client has no public handle

    client = _jd.global_state.client
    if client is None:                          # initialised outside jax.distributed
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(f"tpfl:{name}:{next(_barrier_count)}", int(timeout_s * 1000))


__all__ = ["CPU_COMPILER_OPTIONS", "MeshConfig", "axis_size", "batch_sharding",
           "check_divisible", "cluster_says_multi", "compiler_options", "gather",
           "init_distributed", "is_multi_process", "jit",
           "make_mesh", "pad_batch", "replicate",
           "replicated", "requested_processes", "shard_batch", "sharded_vmap",
           "sync_processes", "unpad_batch"]
