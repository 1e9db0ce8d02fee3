"""`auto_strategy()`: one call for the right `tf.distribute.Strategy` for this process.

`auto_strategy` picks, in this order:

1. a TPU: the `tpu` argument, else the usual TPU environment (`TPU_NAME`,
   `KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS`, `TPU_CONFIG` - the variables `TPUClusterResolver` reads - and
   Colab's `COLAB_TPU_ADDR`), else a TPU attached to this VM (a Google TPU PCI device, as on Cloud,
   Kaggle and Colab TPU VMs) -> `TPUStrategy`, after connecting to the cluster and initializing the
   TPU system;
2. `TF_CONFIG` naming more than one task -> `MultiWorkerMirroredStrategy`;
3. a task of an `srun` step of more than one task (`SLURM_STEP_NUM_TASKS` > 1) ->
   `MultiWorkerMirroredStrategy` over the step's tasks (`keras_trainx.distribute.slurm`);
4. more than one GPU -> `MirroredStrategy` over them; one GPU -> `OneDeviceStrategy("/gpu:0")`;
5. else the default strategy (`tf.distribute.get_strategy()`).

A TPU asked for with `tpu=` that cannot be reached is an error; one found in the environment that
cannot be reached is passed over, and the log line says why. The choice is logged as ONE line on the
`"keras_trainx"` logger (`logging.INFO`), with the replica count.

Every wait is bounded. A `grpc://host:port` TPU address is probed before TensorFlow touches it: a
TCP connection, then the HTTP/2 greeting every gRPC server sends first, within `probe_timeout`
seconds (default 10) - an address that accepts connections but stays silent would otherwise block
`tf.config.experimental_connect_to_cluster` forever, and with it every later TensorFlow call of the
process. Resolving, connecting to and initializing the TPU then get `connect_timeout` seconds
(default 300). A probe that fails leaves the process as it was, so the next choice (cluster, GPUs,
CPU) is made as usual, counting only this machine's devices; a connection that TensorFlow started and
never finished cannot be undone, and auto_strategy says so instead of falling back.
"""

import json
import logging
import os
import pathlib
import socket
import threading
import time
import urllib.parse

import tensorflow as tf

from keras_trainx.distribute.slurm import slurm_cluster_resolver
from keras_trainx.validation import check_float

logger = logging.getLogger("keras_trainx")

# Environment variables naming a remote TPU. TPUClusterResolver itself reads the first three
# (tensorflow/python/tpu/client/client.py); Colab's legacy TPU runtime sets COLAB_TPU_ADDR (host:port).
_TPU_ENVIRONMENT = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG", "COLAB_TPU_ADDR")

# A TPU attached to this VM shows up as a PCI device of Google's vendor id with one of these device
# ids (v2/v3, plc, v4, v5p, v5e, v6e, 7x), as JAX's hardware_utils.py detects it.
_PCI_DEVICES = pathlib.Path("/sys/bus/pci/devices")
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")

# Port of a TPU node's gRPC server when an address names none.
_TPU_GRPC_PORT = 8470

# What an HTTP/2 client sends first (RFC 9113, 3.4): the preface, then a SETTINGS frame (empty here).
# A server's first frame must be a SETTINGS frame (type 0x4); gRPC servers send it at once.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 0x4, 0, 0, 0, 0, 0])
_HTTP2_FRAME_HEADER_BYTES = 9
_HTTP2_SETTINGS = 0x4


def auto_strategy(tpu: str | None = None, *, probe_timeout: float = 10.0,
                  connect_timeout: float = 300.0) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` for the hardware this process runs on, and logs it.

    See the module docstring for the order of choices. Build and compile the model under the
    returned strategy's `scope()`; `keras_trainx.fit_accumulated` and `Model.fit` then train
    across its replicas.

    Args:
        tpu: `None` (default) to detect a TPU from the environment, or the TPU to use: its name,
            a `"grpc://host:port"` address, or `"local"` for a TPU VM. If given and the TPU cannot
            be reached, `RuntimeError` is raised instead of falling back.
        probe_timeout: seconds (> 0) a `grpc://` TPU address gets to accept a TCP connection and
            send its gRPC (HTTP/2) greeting, before TensorFlow is asked to connect to it.
        connect_timeout: seconds (> 0) TensorFlow gets to resolve, connect to and initialize the
            TPU. Past it, `RuntimeError` is raised: the unfinished connection blocks TensorFlow in
            this process, so there is nothing to fall back to; restart without the TPU.

    Returns:
        A `tf.distribute.Strategy`: `TPUStrategy`, `MultiWorkerMirroredStrategy`,
        `MirroredStrategy`, `OneDeviceStrategy` or the default strategy.

    Example:

    >>> import keras, keras_trainx
    >>> strategy = keras_trainx.distribute.auto_strategy()  # on a CPU-only machine: the default
    >>> with strategy.scope():
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    >>> strategy.num_replicas_in_sync
    1
    """
    probe_timeout = check_float("probe_timeout", probe_timeout, minimum=0.0, exclusive_minimum=True)
    connect_timeout = check_float("connect_timeout", connect_timeout, minimum=0.0, exclusive_minimum=True)
    strategy, name, reason = _select(tpu, probe_timeout, connect_timeout)
    logger.info(
        "auto_strategy: %s with %d replica(s) (%s)", name, strategy.num_replicas_in_sync, reason
    )
    return strategy


def _select(tpu: str | None, probe_timeout: float, connect_timeout: float) -> tuple[tf.distribute.Strategy, str, str]:
    """Returns `(strategy, name, reason)`: the strategy, its public name and why it was chosen."""
    if tpu is not None:
        if not isinstance(tpu, str):
            raise TypeError(
                f"`tpu` must be None (detect) or a string: a TPU name, 'grpc://host:port' or "
                f"'local'; received tpu={tpu!r} of type {type(tpu).__name__}."
            )
        if not tpu.strip():
            raise ValueError(
                "`tpu` must not be empty: pass a TPU name, 'grpc://host:port' or 'local', or "
                "tpu=None to detect a TPU from the environment."
            )
        try:
            strategy = _connect_tpu(tpu, probe_timeout, connect_timeout)
            return strategy, "TPUStrategy", f"TPU {tpu!r} from the tpu argument"
        except _TensorFlowBlocked:
            raise
        except Exception as error:
            raise RuntimeError(
                f"auto_strategy could not reach the TPU given as tpu={tpu!r}: "
                f"{type(error).__name__}: {error}. Check the TPU name or address (and that it is "
                "running), or pass tpu=None to use the devices of this machine."
            ) from error

    passed_over = ""
    found = _tpu_from_environment() or _tpu_on_this_vm()
    if found is not None:
        address, source = found
        try:
            return _connect_tpu(address, probe_timeout, connect_timeout), "TPUStrategy", f"TPU from {source}"
        except _TensorFlowBlocked:
            raise
        except Exception as error:
            passed_over = f"; TPU from {source} unreachable, passed over: {type(error).__name__}: {error}"

    workers = _tf_config_tasks()
    if workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, "MultiWorkerMirroredStrategy", f"TF_CONFIG names {workers} tasks{passed_over}"
    slurm = slurm_cluster_resolver()
    if slurm is not None:
        resolver, description = slurm
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        return strategy, "MultiWorkerMirroredStrategy", f"{description}{passed_over}"
    gpus = _gpu_devices()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus), "MirroredStrategy", f"{len(gpus)} GPUs{passed_over}"
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0"), "OneDeviceStrategy", f"1 GPU{passed_over}"
    reason = f"no TPU, cluster or GPU found{passed_over}"
    return tf.distribute.get_strategy(), "the default strategy", reason


def _tpu_from_environment() -> tuple[str | None, str] | None:
    """`(address, source)` for the first TPU variable set, or None. `address` None lets
    `TPUClusterResolver` read the variable itself (`TPU_CONFIG` is JSON it parses)."""
    for name in _TPU_ENVIRONMENT:
        value = os.environ.get(name)
        if not value:
            continue
        if name == "TPU_CONFIG":
            return None, name
        if name == "COLAB_TPU_ADDR":
            return "grpc://" + value, f"{name}={value!r}"
        return value, f"{name}={value!r}"
    return None


def _tpu_on_this_vm() -> tuple[str, str] | None:
    """`("local", source)` if a TPU is attached to this machine (TPU VM), else None."""
    if not _PCI_DEVICES.is_dir():
        return None
    for device in _PCI_DEVICES.iterdir():
        try:
            vendor = (device / "vendor").read_text().strip()
            device_id = (device / "device").read_text().strip()
        except OSError:
            continue
        if vendor == _GOOGLE_PCI_VENDOR and device_id in _TPU_PCI_DEVICE_IDS:
            return "local", f"a TPU PCI device ({device.name}) on this VM"
    return None


class _TensorFlowBlocked(RuntimeError):
    """TensorFlow started connecting to a TPU and did not finish: this process cannot fall back."""


def _connect_tpu(address: str | None, probe_timeout: float, connect_timeout: float) -> tf.distribute.Strategy:
    """Probes, resolves, connects to and initializes the TPU at `address`; returns its `TPUStrategy`.

    The probe touches no TensorFlow state. The TensorFlow calls run in a helper thread that is
    given `connect_timeout` seconds; past it the thread is left blocked and `_TensorFlowBlocked` is
    raised, unless it was still resolving the name (which holds no TensorFlow lock).
    """
    for part in (address or "").split(","):
        if part.strip().startswith("grpc://"):
            _probe_grpc(part.strip(), probe_timeout)
    stage, outcome = ["resolving"], {}

    def connect() -> None:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
            stage[0] = "connecting to"
            tf.config.experimental_connect_to_cluster(resolver)
            stage[0] = "initializing"
            tf.tpu.experimental.initialize_tpu_system(resolver)
            outcome["resolver"] = resolver
        except Exception as error:  # re-raised in the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=connect, name="keras_trainx-tpu-connect", daemon=True)
    thread.start()
    thread.join(connect_timeout)
    if thread.is_alive():
        where = f"TPU {address!r}" if address else "the TPU named by TPU_CONFIG"
        if stage[0] == "resolving":
            raise TimeoutError(f"resolving {where} took longer than connect_timeout={connect_timeout:g} s")
        raise _TensorFlowBlocked(
            f"TensorFlow was still {stage[0]} {where} after connect_timeout={connect_timeout:g} s. "
            "The unfinished connection blocks TensorFlow in this process, so auto_strategy cannot fall "
            "back to other devices: restart the process without the TPU (tpu=None and TPU_NAME, "
            "COLAB_TPU_ADDR, KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS, TPU_CONFIG unset), or with a larger "
            "connect_timeout if the TPU is just slow to start."
        )
    if "error" in outcome:
        raise outcome["error"]
    return tf.distribute.TPUStrategy(outcome["resolver"])


def _probe_grpc(address: str, timeout: float) -> None:
    """Raises `ConnectionError`/`TimeoutError` unless `grpc://host[:port]` greets like a gRPC server
    (an HTTP/2 SETTINGS frame) within `timeout` seconds in all."""
    parsed = urllib.parse.urlsplit(address)
    try:
        host, port = parsed.hostname, parsed.port or _TPU_GRPC_PORT
    except ValueError as error:
        raise ConnectionError(f"{address!r} is not a valid grpc://host:port address ({error})") from None
    if not host:
        raise ConnectionError(f"{address!r} names no host; expected grpc://host:port")
    deadline = time.monotonic() + timeout
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{host}:{port} did not accept a TCP connection within {timeout:g} s") from None
    except OSError as error:
        raise ConnectionError(f"nothing accepts connections at {host}:{port} ({error})") from None
    header = b""
    with connection:
        try:
            connection.sendall(_HTTP2_PREFACE)
            while len(header) < _HTTP2_FRAME_HEADER_BYTES:
                connection.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = connection.recv(_HTTP2_FRAME_HEADER_BYTES - len(header))
                if not chunk:
                    break
                header += chunk
        except TimeoutError:
            raise TimeoutError(
                f"{host}:{port} accepted a TCP connection but sent no gRPC (HTTP/2) greeting within "
                f"{timeout:g} s; it is not a TPU's gRPC endpoint (port {_TPU_GRPC_PORT} on a TPU node)"
            ) from None
        except OSError:  # reset while the greeting was on its way: same as a hang-up
            header = b""
    if not header:
        raise ConnectionError(
            f"{host}:{port} closed the connection without a gRPC (HTTP/2) greeting; it is not a TPU's gRPC "
            f"endpoint (port {_TPU_GRPC_PORT} on a TPU node)"
        )
    if len(header) < _HTTP2_FRAME_HEADER_BYTES or header[3] != _HTTP2_SETTINGS:
        raise ConnectionError(
            f"{host}:{port} answered, but not as a gRPC server (no HTTP/2 SETTINGS frame); it is not a "
            f"TPU's gRPC endpoint (port {_TPU_GRPC_PORT} on a TPU node)"
        )


_FIX = "Fix or unset TF_CONFIG."


def _tf_config_tasks() -> int:
    """Number of training tasks (chief + workers) `TF_CONFIG` names; 0 if it is not set.

    Refuses a `TF_CONFIG` not of the documented shape, naming the field: `{"cluster": {task type:
    ["host:port", ...]}, "task": {"type": a task type of the cluster (or "evaluator"), "index": int}}`
    ("task" may be left out when the cluster names at most one task).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"TF_CONFIG must be a JSON object like {{'cluster': {{'worker': [...]}}, 'task': "
            f"{{'type': 'worker', 'index': 0}}}}; got {raw!r} ({error}). {_FIX}"
        ) from error
    if not isinstance(cluster, dict):
        raise ValueError(
            'TF_CONFIG\'s "cluster" must be a JSON object of task type -> list of "host:port" addresses, e.g. '
            f'{{"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}}; received {cluster!r}. {_FIX}'
        )
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError(f'TF_CONFIG\'s cluster["{kind}"] must be a list of "host:port" addresses; '
                             f"received {addresses!r}. {_FIX}")
    if cluster.get("ps"):
        raise ValueError(
            "TF_CONFIG names parameter servers ('ps'), which MultiWorkerMirroredStrategy does not "
            "use. Create tf.distribute.ParameterServerStrategy yourself, or remove 'ps' from "
            "TF_CONFIG."
        )
    tasks = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task = config.get("task")
    if task is None:
        if tasks > 1:
            raise ValueError(f'TF_CONFIG names {tasks} tasks but no "task" (this process\'s {{"type": ..., '
                             f'"index": ...}}). {_FIX}')
        return tasks
    if not (isinstance(task, dict) and isinstance(task.get("type"), str)
            and isinstance(task.get("index", 0), int) and not isinstance(task.get("index", 0), bool)):
        raise ValueError(
            'TF_CONFIG\'s "task" must be a JSON object like {"type": "worker", "index": 0} naming this '
            f"process's task in the cluster; received {task!r}. {_FIX}"
        )
    in_cluster = 0 <= task.get("index", 0) < len(cluster.get(task["type"], []))
    if not in_cluster and task["type"] != "evaluator":  # TensorFlow's evaluator task sits outside the cluster
        raise ValueError(
            f"TF_CONFIG's task {json.dumps(task)} is not in the cluster, which has "
            f'{len(cluster.get(task["type"], []))} "{task["type"]}" task(s). {_FIX}'
        )
    return tasks


def _gpu_devices() -> list[str]:
    """Names of this machine's logical GPU devices.

    After a TPU connection that failed half-way, TensorFlow also lists the remote cluster's devices
    (`/job:worker/...`); those are not ours to mirror over.
    """
    return [
        device.name for device in tf.config.list_logical_devices("GPU")
        if not device.name.startswith("/job:") or device.name.startswith("/job:localhost/")
    ]
