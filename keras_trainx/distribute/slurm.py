"""The cluster of a Slurm job step, read from the variables `srun` gives each task.

Inside `srun` with more than one task, `auto_strategy()` builds a `MultiWorkerMirroredStrategy` over
the step's tasks from this module's `slurm_cluster_resolver()`. It reads:

- `SLURM_STEP_NUM_TASKS`: the step's task count (the cluster's workers); a step of one task is no
  cluster;
- `SLURM_PROCID`: this task's rank (its worker index);
- `SLURM_STEP_NODELIST`: the step's nodes, a Slurm hostlist (`node[01-04]`), expanded by
  `scontrol show hostnames` when `scontrol` is on `PATH`, else here (`prefix[ranges]suffix`, comma
  separated; anything else needs `scontrol`);
- `SLURM_STEP_TASKS_PER_NODE`: tasks on each of those nodes (`2(x3),1`);
- `SLURMD_NODENAME`: the node this task runs on;
- `SLURM_JOB_ID`: to derive the ports, unless `KERAS_TRAINX_SLURM_PORT` is set.

Tasks are placed as Slurm's default block distribution places them: ranks 0..k-1 on the first node of
the list, and so on. Each node's tasks listen on consecutive ports: `KERAS_TRAINX_SLURM_PORT` and up,
or `20000 + 40 * (SLURM_JOB_ID % 1000)` and up, so that two jobs sharing a node do not collide unless
their ids agree modulo 1000. A task that finds itself on another node than block placement says (an
`srun --distribution=cyclic` step) is an error, not a cluster that hangs.

Each task keeps the GPUs Slurm gave it (`CUDA_VISIBLE_DEVICES`, as `--gpus-per-task` or `--gres` set
it): the resolver reports those and changes nothing. TensorFlow's own `SlurmClusterResolver` is not
used: in TensorFlow 2.21 it fails on a CPU-only task (`range() arg 3 must not be zero`) and on a node
without `nvidia-smi`, orders nodes by string (`node10` before `node9`, against Slurm's rank placement)
and overwrites `CUDA_VISIBLE_DEVICES` with its own split of the node's GPUs.
"""

import os
import re
import shutil
import subprocess

import tensorflow as tf

# The variables `slurm_cluster_resolver` reads, for tests that need a machine without them.
SRUN_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE",
                  "SLURMD_NODENAME", "SLURM_JOB_ID")
PORT_VARIABLE = "KERAS_TRAINX_SLURM_PORT"
FIRST_PORT = 20000
PORTS_PER_JOB = 40
JOB_SLOTS = 1000

_SCONTROL_TIMEOUT_S = 30.0
_FIX = "Run under srun, which sets it, or set TF_CONFIG instead."


def slurm_cluster_resolver() -> tuple[tf.distribute.cluster_resolver.ClusterResolver, str] | None:
    """The cluster of the `srun` step this process is a task of, or None outside a step of several tasks.

    See the module docstring for the variables read, the task placement and the ports.

    Returns:
        `(resolver, description)`: a `tf.distribute.cluster_resolver.SimpleClusterResolver` naming
        every task of the step as a `"worker"` at `host:port`, this task as worker `SLURM_PROCID`,
        and this task's visible GPUs as its accelerators; and a one-line description for the log.
        `None` when `SLURM_STEP_NUM_TASKS` is unset or 1.

    Raises:
        ValueError: a variable is missing or malformed; the message names it.

    Example:

    >>> from keras_trainx.distribute.slurm import slurm_cluster_resolver
    >>> slurm_cluster_resolver() is None  # not inside srun
    True
    """
    raw_tasks = os.environ.get("SLURM_STEP_NUM_TASKS")
    if raw_tasks is None:
        return None
    tasks = _integer("SLURM_STEP_NUM_TASKS", raw_tasks, minimum=1)
    if tasks == 1:
        return None
    rank = _integer("SLURM_PROCID", _required("SLURM_PROCID"), minimum=0)
    if rank >= tasks:
        raise ValueError(f"SLURM_PROCID={rank} must be below SLURM_STEP_NUM_TASKS={tasks}. {_FIX}")
    hosts = expand_nodelist(_required("SLURM_STEP_NODELIST"))
    per_node = expand_tasks_per_node(_required("SLURM_STEP_TASKS_PER_NODE"))
    if len(per_node) != len(hosts):
        raise ValueError(
            f"SLURM_STEP_TASKS_PER_NODE={os.environ['SLURM_STEP_TASKS_PER_NODE']!r} gives {len(per_node)} "
            f"node(s), SLURM_STEP_NODELIST={os.environ['SLURM_STEP_NODELIST']!r} {len(hosts)}. {_FIX}"
        )
    if sum(per_node) != tasks:
        raise ValueError(
            f"SLURM_STEP_TASKS_PER_NODE={os.environ['SLURM_STEP_TASKS_PER_NODE']!r} places {sum(per_node)} "
            f"tasks, SLURM_STEP_NUM_TASKS={tasks}. {_FIX}"
        )
    first_port, port_source = _first_port(max(per_node))
    addresses = [f"{host}:{first_port + local}" for host, count in zip(hosts, per_node) for local in range(count)]
    node = _required("SLURMD_NODENAME")
    placed_on = addresses[rank].rsplit(":", 1)[0]
    if node != placed_on:
        raise ValueError(
            f"SLURMD_NODENAME={node!r}, but block placement over SLURM_STEP_NODELIST puts task "
            f"SLURM_PROCID={rank} on {placed_on!r}: start srun with --distribution=block (its default), "
            "or set TF_CONFIG yourself."
        )
    gpus = len(tf.config.list_physical_devices("GPU"))
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": addresses}), task_type="worker", task_id=rank,
        num_accelerators={"GPU": gpus}, rpc_layer="grpc",
    )
    description = (f"Slurm step of {tasks} tasks on {len(hosts)} node(s): this is task {rank} at "
                   f"{addresses[rank]}, ports from {port_source}, {gpus} GPU(s) per task")
    return resolver, description


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a Slurm hostlist (`SLURM_STEP_NODELIST`), in Slurm's order.

    Args:
        nodelist: a hostlist such as `"node[01-03,07],login1"`. `scontrol show hostnames` expands it
            when `scontrol` is on `PATH`; without it, comma-separated `prefix[ranges]suffix` items
            are expanded here.

    Returns:
        The host names, one per node.

    Raises:
        ValueError: naming `SLURM_STEP_NODELIST` when the list is empty or cannot be expanded.

    Example:

    >>> import shutil
    >>> from keras_trainx.distribute.slurm import expand_nodelist
    >>> expand_nodelist("gpu[08-10],login") if shutil.which("scontrol") is None else "no scontrol here"
    ['gpu08', 'gpu09', 'gpu10', 'login']
    """
    if not nodelist.strip():
        raise ValueError(f"SLURM_STEP_NODELIST is empty; it must name the step's nodes. {_FIX}")
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        return _scontrol_hostnames(scontrol, nodelist)
    hosts = []
    items = re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist)
    if ",".join(items) != nodelist:
        raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r} has an empty item. {_FIX}")
    for item in items:
        match = re.fullmatch(r"([^\[\]]*)(?:\[([0-9,-]+)\]([^\[\]]*))?", item)
        if match is None:
            raise ValueError(
                f"SLURM_STEP_NODELIST={nodelist!r}: cannot expand {item!r} without scontrol (not on PATH); "
                "put scontrol on PATH, or set TF_CONFIG instead."
            )
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not first.isdigit() or not (last or first).isdigit() or int(last or first) < int(first):
                raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r}: {part!r} is not a range like 01-04. {_FIX}")
            hosts.extend(f"{prefix}{number:0{len(first)}d}{suffix}" for number in range(int(first),
                                                                                        int(last or first) + 1))
    return hosts


def expand_tasks_per_node(tasks_per_node: str) -> list[int]:
    """The task count of each node, from Slurm's compressed form (`SLURM_STEP_TASKS_PER_NODE`).

    Args:
        tasks_per_node: counts separated by commas, `N(xK)` for K nodes of N tasks each.

    Returns:
        One count per node.

    Raises:
        ValueError: naming `SLURM_STEP_TASKS_PER_NODE` when the text is not of that form.

    Example:

    >>> from keras_trainx.distribute.slurm import expand_tasks_per_node
    >>> expand_tasks_per_node("2(x3),1")
    [2, 2, 2, 1]
    """
    counts = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*([1-9][0-9]*)(?:\(x([1-9][0-9]*)\))?\s*", part)
        if match is None:
            raise ValueError(
                f"SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}: {part!r} is not a task count like 2 or "
                f"2(x3). {_FIX}"
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _scontrol_hostnames(scontrol: str, nodelist: str) -> list[str]:
    try:
        result = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                timeout=_SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r}: `scontrol show hostnames` failed ({error}).") from None
    hosts = result.stdout.split()
    if result.returncode != 0 or not hosts:
        raise ValueError(
            f"SLURM_STEP_NODELIST={nodelist!r}: `scontrol show hostnames` exited with status "
            f"{result.returncode} and {len(hosts)} host(s): {result.stderr.strip()[:200]!r}. {_FIX}"
        )
    return hosts


def _first_port(tasks_on_a_node: int) -> tuple[int, str]:
    """The port of each node's first task, and where it came from."""
    raw = os.environ.get(PORT_VARIABLE)
    if raw is not None:
        last = 65535 - (tasks_on_a_node - 1)
        port = _integer(PORT_VARIABLE, raw, minimum=1024, fix=f"Set it to a free port in 1024..{last}.")
        if port > last:
            raise ValueError(f"{PORT_VARIABLE}={port} leaves no port for the node's {tasks_on_a_node} tasks: "
                             f"set it to a free port in 1024..{last}.")
        return port, f"{PORT_VARIABLE}={port}"
    job = _integer("SLURM_JOB_ID", _required("SLURM_JOB_ID"), minimum=0,
                   fix=f"Set {PORT_VARIABLE} to the first port instead.")
    return FIRST_PORT + PORTS_PER_JOB * (job % JOB_SLOTS), f"SLURM_JOB_ID={job}"


def _required(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"{name} is not set, but SLURM_STEP_NUM_TASKS={os.environ['SLURM_STEP_NUM_TASKS']} "
                         f"says this is a task of a Slurm step. {_FIX}")
    return value


def _integer(name: str, raw: str, *, minimum: int, fix: str = _FIX) -> int:
    if not re.fullmatch(r"\s*[0-9]+\s*", raw) or int(raw) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; received {name}={raw!r}. {fix}")
    return int(raw)
