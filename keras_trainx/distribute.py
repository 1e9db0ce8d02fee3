"""`auto_strategy()`: one call for the right `tf.distribute.Strategy`, and the helpers that go with it.

`auto_strategy` picks, in this order:

1. a TPU: the `tpu` argument, else the usual TPU environment (`TPU_NAME`,
   `KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS`, `TPU_CONFIG` - the variables `TPUClusterResolver` reads - and
   Colab's `COLAB_TPU_ADDR`), else a TPU attached to this VM (a Google TPU PCI device, as on Cloud,
   Kaggle and Colab TPU VMs) -> `TPUStrategy`, after connecting to the cluster and initializing the
   TPU system;
2. `TF_CONFIG` naming more than one task -> `MultiWorkerMirroredStrategy`;
3. more than one GPU -> `MirroredStrategy` over them; one GPU -> `OneDeviceStrategy("/gpu:0")`;
4. else the default strategy (`tf.distribute.get_strategy()`).

A TPU asked for with `tpu=` that cannot be reached is an error; one found in the environment that
cannot be reached is passed over, and the log line says why. A `grpc://host:port` address is probed
before TensorFlow touches it, for at most `probe_timeout` seconds (10 by default): it must accept a
TCP connection and answer an HTTP/2 (gRPC) connection preface, since TensorFlow would otherwise wait
forever on an address that accepts TCP but does not speak gRPC, and leave the process unable to pick
another strategy. The choice is logged as ONE line on the
`"keras_trainx"` logger (`logging.INFO`), with the replica count.

`global_batch_size`, `scale_learning_rate` and `input_dataset` are what a script needs next: the
global batch, the linear learning-rate scaling rule, and a `tf.data` input with static shapes (TPUs
compile for fixed shapes).
"""

import json
import logging
import os
import pathlib
import socket
import urllib.parse

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.data import to_tf_dataset
from keras_trainx.validation import check_bool, check_float, check_int

logger = logging.getLogger("keras_trainx")

# Environment variables naming a remote TPU. TPUClusterResolver itself reads the first three
# (tensorflow/python/tpu/client/client.py); Colab's legacy TPU runtime sets COLAB_TPU_ADDR (host:port).
_TPU_ENVIRONMENT = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG", "COLAB_TPU_ADDR")

# A TPU attached to this VM shows up as a PCI device of Google's vendor id with one of these device
# ids (v2/v3, plc, v4, v5p, v5e, v6e, 7x), as JAX's hardware_utils.py detects it.
_PCI_DEVICES = pathlib.Path("/sys/bus/pci/devices")
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")

# Seconds to wait for a grpc:// TPU address to accept a connection. Without this check
# tf.config.experimental_connect_to_cluster waits forever on an address nobody listens on.
# The client connection preface of HTTP/2 and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5): any
# gRPC server answers it with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def auto_strategy(tpu=None, *, probe_timeout=10.0):
    """Returns the `tf.distribute.Strategy` for the hardware this process runs on, and logs it.

    See the module docstring for the order of choices. Build and compile the model under the
    returned strategy's `scope()`; `keras_trainx.fit_accumulated` and `Model.fit` then train
    across its replicas.

    Args:
        tpu: `None` (default) to detect a TPU from the environment, or the TPU to use: its name,
            a `"grpc://host:port"` address, or `"local"` for a TPU VM. If given and the TPU cannot
            be reached, `RuntimeError` is raised instead of falling back.
        probe_timeout: seconds (> 0) a `grpc://host:port` TPU address may take to accept a
            connection and answer as a gRPC server before it counts as unreachable.

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
    probe_timeout = check_float("probe_timeout", probe_timeout, minimum=0.0,
                                exclusive_minimum=True, hint="It bounds the wait for a TPU address.")
    strategy, name, reason = _select(tpu, probe_timeout)
    logger.info(
        "auto_strategy: %s with %d replica(s) (%s)", name, strategy.num_replicas_in_sync, reason
    )
    return strategy


def _select(tpu, probe_timeout):
    """Returns `(strategy, name, reason)`: the strategy, its public name and why it was chosen."""
    if tpu is not None:
        if not isinstance(tpu, str):
            raise TypeError(
                f"tpu must be None (detect) or a string: a TPU name, 'grpc://host:port' or "
                f"'local'; got {type(tpu).__name__} {tpu!r}."
            )
        if not tpu:
            raise ValueError(
                "tpu must not be empty: pass a TPU name, 'grpc://host:port' or 'local', or "
                "tpu=None to detect a TPU from the environment."
            )
        try:
            return (_connect_tpu(tpu, probe_timeout), "TPUStrategy",
                    f"TPU {tpu!r} from the tpu argument")
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
            return _connect_tpu(address, probe_timeout), "TPUStrategy", f"TPU from {source}"
        except Exception as error:
            passed_over = f"; TPU from {source} unreachable, passed over: {type(error).__name__}: {error}"

    workers = _tf_config_tasks()
    if workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, "MultiWorkerMirroredStrategy", f"TF_CONFIG names {workers} tasks{passed_over}"
    gpus = _gpu_devices()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus), "MirroredStrategy", f"{len(gpus)} GPUs{passed_over}"
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0"), "OneDeviceStrategy", f"1 GPU{passed_over}"
    reason = f"no TPU, cluster or GPU found{passed_over}"
    return tf.distribute.get_strategy(), "the default strategy", reason


def _tpu_from_environment():
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


def _tpu_on_this_vm():
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


def _connect_tpu(address, probe_timeout):
    """Resolves, connects to and initializes the TPU at `address`; returns its `TPUStrategy`."""
    _check_grpc_reachable(address, probe_timeout)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _check_grpc_reachable(address, timeout):
    """Raises ConnectionError unless a single `grpc://host:port` address answers as an HTTP/2 server
    within `timeout` seconds (accepting the connection, then a SETTINGS frame for our preface)."""
    if not address or not address.startswith("grpc://") or "," in address:
        return
    parsed = urllib.parse.urlsplit(address)
    port = parsed.port or 8470
    where = f"{parsed.hostname}:{port}"
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(_HTTP2_PREFACE)
            header = connection.recv(9)
    except socket.timeout:
        raise ConnectionError(
            f"{where} accepts connections but sent no gRPC (HTTP/2) answer within {timeout:g} s: "
            "is it the TPU's gRPC port (8470)? Raise probe_timeout for a slow network."
        ) from None
    except OSError as error:
        raise ConnectionError(f"nothing accepts connections at {where} ({error})") from error
    if len(header) < 4 or header[3] != _HTTP2_SETTINGS:
        raise ConnectionError(
            f"{where} answered, but not as a gRPC (HTTP/2) server: is it the TPU's gRPC port (8470)?"
        )


def _tf_config_tasks():
    """Number of training tasks (chief + workers) `TF_CONFIG` names; 0 if it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"TF_CONFIG must be a JSON object like {{'cluster': {{'worker': [...]}}, 'task': "
            f"{{'type': 'worker', 'index': 0}}}}; got {raw!r} ({error}). Fix or unset TF_CONFIG."
        ) from error
    if cluster.get("ps"):
        raise ValueError(
            "TF_CONFIG names parameter servers ('ps'), which MultiWorkerMirroredStrategy does not "
            "use. Create tf.distribute.ParameterServerStrategy yourself, or remove 'ps' from "
            "TF_CONFIG."
        )
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def _gpu_devices():
    """Names of this process's logical GPU devices."""
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def global_batch_size(per_replica_batch_size, strategy=None):
    """Returns the global batch size: `per_replica_batch_size` times the strategy's replicas.

    Under a strategy, `Model.fit(batch_size=...)`, `fit_accumulated(batch_size=...)` and a
    `tf.data.Dataset`'s batch are the GLOBAL batch, split across all replicas of all workers.

    Args:
        per_replica_batch_size: positive int, samples each replica processes per step.
        strategy: a `tf.distribute.Strategy`; default: the current one (`tf.distribute.get_strategy()`).

    Returns:
        An int.

    Example:

    >>> import tensorflow as tf, keras_trainx
    >>> strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    >>> keras_trainx.distribute.global_batch_size(32, strategy)
    32
    """
    check_int("per_replica_batch_size", per_replica_batch_size, minimum=1)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"strategy must be a tf.distribute.Strategy or None (the current one); got "
            f"{type(strategy).__name__}."
        )
    return int(per_replica_batch_size) * strategy.num_replicas_in_sync


def scale_learning_rate(base_learning_rate, global_batch_size, base_batch_size):
    """The linear scaling rule: `base_learning_rate * global_batch_size / base_batch_size`.

    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (2017): when the
    minibatch grows k times, multiply the learning rate by k (with a warm-up for large k, e.g.
    a keras_trainx warm-up schedule). Their ResNet-50 setting is 0.1 per 256 images, so 3.2 at 8192.

    Args:
        base_learning_rate: positive float, the learning rate tuned at `base_batch_size`.
        global_batch_size: positive int, the batch size of one update now (with gradient
            accumulation: micro-batch * accum_steps, summed over replicas).
        base_batch_size: positive int, the batch size `base_learning_rate` was tuned for.

    Returns:
        A float.

    Example:

    >>> import keras_trainx
    >>> keras_trainx.distribute.scale_learning_rate(0.1, 8192, 256)
    3.2
    """
    base_learning_rate = check_float("base_learning_rate", base_learning_rate, minimum=0.0,
                                     exclusive_minimum=True,
                                     hint="It is the rate tuned at base_batch_size.")
    global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    base_batch_size = check_int("base_batch_size", base_batch_size, minimum=1)
    return base_learning_rate * global_batch_size / base_batch_size


def input_dataset(
    x,
    y=None,
    *,
    batch_size=None,
    sample_weight=None,
    shuffle=None,
    seed=None,
    drop_remainder=True,
):
    """Turns arrays or a `keras.utils.PyDataset` into a `tf.data.Dataset` with static shapes.

    TPUs compile for fixed shapes: with `drop_remainder=True` (default) every batch has exactly
    `batch_size` samples and the dataset's `element_spec` says so. Floating-point arrays are cast to
    `keras.config.floatx()`, as `Model.fit` does. Pass the result to `Model.fit` or
    `fit_accumulated` (it distributes the batches over the strategy's replicas) or to
    `strategy.experimental_distribute_dataset`.

    Args:
        x: a numpy array (or a dict/list/tuple of them, for several inputs), or a
            `keras.utils.PyDataset`, which is converted by `keras_trainx.data.to_tf_dataset`.
        y: targets, arrays like `x` (None for unsupervised data or a PyDataset).
        batch_size: for arrays, the GLOBAL batch size (see `global_batch_size`); a PyDataset
            batches itself, so leave it None.
        sample_weight: array of per-sample weights, or None. Arrays only, and only with `y`.
        shuffle: for arrays, whether to shuffle the samples anew each epoch; None (default) means
            True. A PyDataset keeps its own order (`AugmentedSequence(shuffle=...)` shuffles
            itself), so leave it None.
        seed: int seed of the array shuffle, for a reproducible order; None for a random one.
        drop_remainder: whether to drop the last, smaller batch. Keep True for TPUs. With False,
            arrays keep every sample but the batch dimension becomes unknown (`None`), and a
            PyDataset whose last batch is smaller is refused (ValueError).

    Returns:
        A `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, sample_weight)` batches.

    Example:

    >>> import numpy as np, keras_trainx
    >>> x, y = np.zeros((10, 3), "float32"), np.arange(10)
    >>> ds = keras_trainx.distribute.input_dataset(x, y, batch_size=4, shuffle=False)
    >>> [int(b[1][0]) for b in ds], ds.element_spec[0].shape.as_list()
    ([0, 4], [4, 3])
    """
    if not isinstance(drop_remainder, bool):
        raise TypeError(f"drop_remainder must be True or False; got {drop_remainder!r}.")
    if isinstance(x, keras.utils.PyDataset):
        return _pydataset_input(x, y, batch_size, sample_weight, shuffle, seed, drop_remainder)
    if batch_size is None:
        raise ValueError(
            "batch_size is required for array inputs: pass the global batch size, e.g. "
            "batch_size=keras_trainx.distribute.global_batch_size(32, strategy)."
        )
    check_int("batch_size", batch_size, minimum=1)
    if sample_weight is not None and y is None:
        raise ValueError("sample_weight needs y: pass the targets as y, or drop sample_weight.")
    if shuffle is None:
        shuffle = True
    check_bool("shuffle", shuffle, hint="None means True.")
    if seed is not None:
        check_int("seed", seed, hint="Or None for a random order each time.")

    arrays = {
        name: _as_arrays(name, value)
        for name, value in (("x", x), ("y", y), ("sample_weight", sample_weight))
        if value is not None
    }
    num_samples = _num_samples(arrays)
    if drop_remainder and num_samples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_samples} samples, so with "
            "drop_remainder=True there would be no batch at all. Use a smaller batch_size."
        )
    data = tuple(arrays.values())
    dataset = tf.data.Dataset.from_tensor_slices(data[0] if len(data) == 1 else data)
    if shuffle:
        dataset = dataset.shuffle(num_samples, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _pydataset_input(sequence, y, batch_size, sample_weight, shuffle, seed, drop_remainder):
    """`to_tf_dataset(sequence)`, after refusing the arguments that only apply to arrays."""
    for name, value in (("y", y), ("batch_size", batch_size), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"{name} must be None when x is a PyDataset: its batches already hold the inputs, "
                "targets and weights at its own batch size."
            )
    for name, value in (("shuffle", shuffle), ("seed", seed)):
        if value is not None:
            raise ValueError(
                f"{name} must be None when x is a PyDataset: it orders its batches itself "
                "(e.g. AugmentedSequence(shuffle=..., seed=...))."
            )
    return to_tf_dataset(sequence, drop_remainder=drop_remainder)


def _as_arrays(name, value):
    """`value` (an array or a nest of arrays) as numpy arrays, floats cast to floatx."""

    def convert(array):
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(
                f"{name} must hold arrays with a sample axis first; got a scalar. Pass one value "
                "per sample."
            )
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(keras.config.floatx(), copy=False)
        return array

    return tf.nest.map_structure(convert, value)


def _num_samples(arrays):
    """The common length of all arrays; ValueError naming the arguments that differ."""
    lengths = {
        (name, len(array)) for name, value in arrays.items() for array in tf.nest.flatten(value)
    }
    if len({length for _, length in lengths}) > 1:
        described = ", ".join(f"{name}: {length}" for name, length in sorted(lengths))
        raise ValueError(
            f"x, y and sample_weight must have the same number of samples; got {described}. "
            "Pass arrays with one row per sample."
        )
    return next(iter(lengths))[1]
