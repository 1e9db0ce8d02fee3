"""auto_strategy's choices, its log line, and the distribute helpers.

No TPU or GPU exists here: the TPU classes of TensorFlow (resolver, connect, initialize, TPUStrategy),
the GPU list and the PCI device directory are replaced by fakes that record what auto_strategy does
with them. Unreachable TPU addresses are real (a closed port on 127.0.0.1). The real
MultiWorkerMirroredStrategy choice is checked with two processes in test_distribute_multiworker.py.
"""

import json
import logging
import socket
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx import distribute
from keras_trainx.distribute import slurm
from keras_trainx.distribute import strategy as distribute_strategy

_ENVIRONMENT = ("TF_CONFIG",) + distribute_strategy._TPU_ENVIRONMENT + slurm.SRUN_VARIABLES


@pytest.fixture(autouse=True)
def bare_machine(monkeypatch, tmp_path):
    """No TPU variables, no TF_CONFIG, no srun step, no PCI devices, no GPUs - whatever machine runs the tests."""
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    pci = tmp_path / "pci"
    pci.mkdir()
    monkeypatch.setattr(distribute_strategy, "_PCI_DEVICES", pci)
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: [])
    return pci


@pytest.fixture
def fake_tpu(monkeypatch):
    """Replaces TensorFlow's TPU entry points by recorders; returns the list of calls made."""
    calls = []

    class Resolver:
        def __init__(self, tpu=None):
            calls.append(("TPUClusterResolver", tpu))
            self.tpu = tpu

    class TPUStrategy:
        num_replicas_in_sync = 8

        def __init__(self, resolver):
            calls.append(("TPUStrategy", resolver.tpu))

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
    monkeypatch.setattr(
        tf.config, "experimental_connect_to_cluster",
        lambda resolver: calls.append(("connect", resolver.tpu)),
    )
    monkeypatch.setattr(
        tf.tpu.experimental, "initialize_tpu_system",
        lambda resolver: calls.append(("initialize", resolver.tpu)),
    )
    monkeypatch.setattr(tf.distribute, "TPUStrategy", TPUStrategy)
    return calls


def _tpu_sequence(address):
    return [
        ("TPUClusterResolver", address),
        ("connect", address),
        ("initialize", address),
        ("TPUStrategy", address),
    ]


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listening_port():
    """A port on 127.0.0.1 that greets like a gRPC server (a stand-in TPU gRPC endpoint): it sends the
    HTTP/2 SETTINGS frame auto_strategy's probe waits for (see test_distribute_probes.py)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.1)
        stop = threading.Event()

        def greet():
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                with connection:
                    connection.sendall(bytes([0, 0, 0, 0x4, 0, 0, 0, 0, 0]))

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        stop.set()
        thread.join()


def _choose(caplog, **kwargs):
    """Runs auto_strategy and returns (strategy, the messages it logged)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="keras_trainx"):
        strategy = distribute.auto_strategy(**kwargs)
    return strategy, [r.getMessage() for r in caplog.records if r.name == "keras_trainx"]


# --- TPU ------------------------------------------------------------------------------------------


def test_explicit_tpu_connects_initializes_and_logs(fake_tpu, caplog):
    strategy, messages = _choose(caplog, tpu="my-tpu")
    assert fake_tpu == _tpu_sequence("my-tpu")
    assert type(strategy).__name__ == "TPUStrategy"
    assert messages == ["auto_strategy: TPUStrategy with 8 replica(s) (TPU 'my-tpu' from the tpu argument)"]


def test_explicit_unreachable_tpu_is_an_error(closed_port):
    address = f"grpc://127.0.0.1:{closed_port}"
    with pytest.raises(RuntimeError, match=r"could not reach the TPU given as tpu='grpc://127\.0\.0\.1:") as info:
        distribute.auto_strategy(tpu=address)
    assert f"nothing accepts connections at 127.0.0.1:{closed_port}" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_explicit_tpu_that_fails_to_initialize_is_an_error(fake_tpu, monkeypatch):
    def no_tpu(resolver):
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster")

    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", no_tpu)
    with pytest.raises(RuntimeError, match="NotFoundError: TPUs not found in the cluster"):
        distribute.auto_strategy(tpu="local")
    assert fake_tpu == [("TPUClusterResolver", "local"), ("connect", "local")]


@pytest.mark.parametrize(
    "bad, error, message",
    [("", ValueError, "`tpu` must not be empty"), (" ", ValueError, "`tpu` must not be empty"),
     (3, TypeError, "`tpu` must be None"), (["my-tpu"], TypeError, "`tpu` must be None")],
)
def test_tpu_argument_must_be_a_name(bad, error, message):
    with pytest.raises(error, match=message):
        distribute.auto_strategy(tpu=bad)


@pytest.mark.parametrize(
    "name, value, address",
    [
        ("TPU_NAME", "my-tpu", "my-tpu"),
        ("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "grpc://127.0.0.1:{port}", "grpc://127.0.0.1:{port}"),
        ("COLAB_TPU_ADDR", "127.0.0.1:{port}", "grpc://127.0.0.1:{port}"),
        ("TPU_CONFIG", json.dumps({"tpu_node_name": "node"}), None),
    ],
)
def test_tpu_from_environment(fake_tpu, caplog, monkeypatch, listening_port, name, value, address):
    monkeypatch.setenv(name, value.replace("{port}", str(listening_port)))
    if address is not None:
        address = address.replace("{port}", str(listening_port))
    strategy, messages = _choose(caplog)
    assert fake_tpu == _tpu_sequence(address)
    assert type(strategy).__name__ == "TPUStrategy"
    assert len(messages) == 1 and messages[0].startswith(
        f"auto_strategy: TPUStrategy with 8 replica(s) (TPU from {name}"
    )


def test_unreachable_tpu_from_environment_falls_through(caplog, monkeypatch, closed_port):
    monkeypatch.setenv("TPU_NAME", f"grpc://127.0.0.1:{closed_port}")
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: ["/device:GPU:0"])
    strategy, messages = _choose(caplog)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert messages == [
        "auto_strategy: OneDeviceStrategy with 1 replica(s) (1 GPU; TPU from "
        f"TPU_NAME='grpc://127.0.0.1:{closed_port}' unreachable, passed over: ConnectionError: "
        f"nothing accepts connections at 127.0.0.1:{closed_port} ([Errno 111] Connection refused))"
    ]


def test_tpu_vm_detected_from_pci_devices(fake_tpu, caplog, bare_machine):
    for slot, vendor, device in [("0000:00:04.0", "0x1ae0", "0x0042"), ("0000:00:05.0", "0x1ae0", "0x005e")]:
        (bare_machine / slot).mkdir()
        (bare_machine / slot / "vendor").write_text(vendor + "\n")
        (bare_machine / slot / "device").write_text(device + "\n")
    strategy, messages = _choose(caplog)
    assert fake_tpu == _tpu_sequence("local")
    assert messages == [
        "auto_strategy: TPUStrategy with 8 replica(s) (TPU from a TPU PCI device (0000:00:05.0) on this VM)"
    ]


def test_google_network_card_is_not_a_tpu(fake_tpu, caplog, bare_machine):
    (bare_machine / "0000:00:04.0").mkdir()  # gVNIC: Google's vendor id, not a TPU device id
    (bare_machine / "0000:00:04.0" / "vendor").write_text("0x1ae0\n")
    (bare_machine / "0000:00:04.0" / "device").write_text("0x0042\n")
    strategy, _ = _choose(caplog)
    assert fake_tpu == []
    assert strategy is tf.distribute.get_strategy()


# --- clusters, GPUs, default ----------------------------------------------------------------------


def test_tf_config_with_two_workers_chooses_multi_worker(caplog, monkeypatch):
    class MultiWorker:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", MultiWorker)
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: ["/device:GPU:0", "/device:GPU:1"])
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    strategy, messages = _choose(caplog)
    assert isinstance(strategy, MultiWorker)
    assert messages == ["auto_strategy: MultiWorkerMirroredStrategy with 2 replica(s) (TF_CONFIG names 2 tasks)"]


def test_tf_config_with_one_task_is_not_a_cluster(caplog, monkeypatch):
    config = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    strategy, _ = _choose(caplog)
    assert strategy is tf.distribute.get_strategy()


@pytest.mark.parametrize(
    "value, message",
    [
        ("{not json", "TF_CONFIG must be a JSON object"),
        (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}}), "parameter servers"),
    ],
)
def test_bad_tf_config_is_an_error(monkeypatch, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message):
        distribute.auto_strategy()


def test_two_gpus_choose_mirrored_over_them(caplog, monkeypatch):
    # A recorder: a real MirroredStrategy over GPUs this machine lacks fails once an earlier test of
    # the session has placed collective ops ("Could not satisfy device specification").
    class Mirrored:
        num_replicas_in_sync = 2

        def __init__(self, devices):
            self.devices = devices

    monkeypatch.setattr(tf.distribute, "MirroredStrategy", Mirrored)
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: ["/device:GPU:0", "/device:GPU:1"])
    strategy, messages = _choose(caplog)
    assert isinstance(strategy, Mirrored)
    assert strategy.devices == ["/device:GPU:0", "/device:GPU:1"]
    assert messages == ["auto_strategy: MirroredStrategy with 2 replica(s) (2 GPUs)"]


def test_one_gpu_chooses_one_device(caplog, monkeypatch):
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: ["/device:GPU:0"])
    strategy, messages = _choose(caplog)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:GPU:0",)
    assert messages == ["auto_strategy: OneDeviceStrategy with 1 replica(s) (1 GPU)"]


def test_nothing_found_gives_the_default_strategy(caplog):
    strategy, messages = _choose(caplog)
    assert strategy is tf.distribute.get_strategy()
    assert messages == [
        "auto_strategy: the default strategy with 1 replica(s) (no TPU, cluster or GPU found)"
    ]


# --- global batch and learning-rate scaling -------------------------------------------------------


def test_global_batch_size_multiplies_by_replicas():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert distribute.global_batch_size(32, mirrored) == 64
    assert distribute.global_batch_size(32) == 32
    with mirrored.scope():
        assert distribute.global_batch_size(24) == 48


@pytest.mark.parametrize(
    "bad, error, message",
    [(0, ValueError, "must be an int >= 1; received per_replica_batch_size=0"), (-4, ValueError, "must be an int >= 1"),
     (2.0, TypeError, "must be an int; received"), (True, TypeError, "must be an int"),
     (None, TypeError, "must be an int")],
)
def test_global_batch_size_rejects_bad_sizes(bad, error, message):
    with pytest.raises(error, match=f"`per_replica_batch_size` {message}"):
        distribute.global_batch_size(bad)


def test_global_batch_size_rejects_a_non_strategy():
    with pytest.raises(TypeError, match="`strategy` must be a tf.distribute.Strategy"):
        distribute.global_batch_size(8, "mirrored")


def test_linear_scaling_rule_matches_goyal_et_al():
    # Goyal et al. 2017, section 5.1: lr = 0.1 * kn / 256; their 8k minibatch uses 3.2.
    assert distribute.scale_learning_rate(0.1, 8192, 256) == pytest.approx(3.2, rel=1e-15)
    assert distribute.scale_learning_rate(0.1, 256, 256) == pytest.approx(0.1, rel=1e-15)
    assert distribute.scale_learning_rate(1e-3, 96, 32) == pytest.approx(3e-3, rel=1e-15)


@pytest.mark.parametrize(
    "args, error, name",
    [((0.0, 64, 32), ValueError, "base_learning_rate"), ((True, 64, 32), TypeError, "base_learning_rate"),
     ((float("inf"), 64, 32), ValueError, "base_learning_rate"), ((float("nan"), 64, 32), ValueError,
     "base_learning_rate"), ((0.1, 0, 32), ValueError, "global_batch_size"),
     ((0.1, 64, 32.0), TypeError, "base_batch_size")],
)
def test_scale_learning_rate_rejects_bad_arguments(args, error, name):
    with pytest.raises(error, match=f"`{name}` must be"):
        distribute.scale_learning_rate(*args)


# --- input_dataset --------------------------------------------------------------------------------


def _batches(dataset):
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset]


def test_input_dataset_has_static_batches_in_order():
    x = np.arange(30, dtype="float64").reshape(10, 3)
    y = np.arange(10, 20)
    weights = np.linspace(0.1, 1.0, 10)
    dataset = distribute.input_dataset(x, y, batch_size=4, sample_weight=weights, shuffle=False)
    assert [spec.shape.as_list() for spec in dataset.element_spec] == [[4, 3], [4], [4]]
    assert [spec.dtype for spec in dataset.element_spec] == [tf.float32, tf.int64, tf.float32]
    batches = _batches(dataset)
    assert len(batches) == 2  # 10 samples: the last 2 are dropped
    for index, (bx, by, bw) in enumerate(batches):
        np.testing.assert_array_equal(bx, x[4 * index : 4 * index + 4].astype("float32"))
        np.testing.assert_array_equal(by, y[4 * index : 4 * index + 4])
        np.testing.assert_array_equal(bw, weights[4 * index : 4 * index + 4].astype("float32"))


def test_input_dataset_keeps_the_remainder_on_request():
    dataset = distribute.input_dataset(np.arange(10), batch_size=4, shuffle=False, drop_remainder=False)
    assert dataset.element_spec.shape.as_list() == [None]
    assert [b.tolist() for b in _batches(dataset)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_input_dataset_of_several_inputs():
    x = {"image": np.zeros((6, 2, 2), "float32"), "label_id": np.arange(6)}
    dataset = distribute.input_dataset(x, np.arange(6) * 2, batch_size=3, shuffle=False)
    spec_x, spec_y = dataset.element_spec
    assert spec_x["image"].shape.as_list() == [3, 2, 2] and spec_y.shape.as_list() == [3]
    assert [(b[0]["label_id"].tolist(), b[1].tolist()) for b in _batches(dataset)] == [
        ([0, 1, 2], [0, 2, 4]),
        ([3, 4, 5], [6, 8, 10]),
    ]


def test_input_dataset_shuffles_each_epoch_reproducibly():
    x = np.arange(12)
    dataset = distribute.input_dataset(x, batch_size=4, seed=7)
    first, second = (np.concatenate(_batches(dataset)) for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(12))  # each epoch: every sample once
    assert first.tolist() != list(range(12)) and first.tolist() != second.tolist()
    again = distribute.input_dataset(x, batch_size=4, seed=7)
    assert np.concatenate(_batches(again)).tolist() == first.tolist()


def test_input_dataset_trains_like_the_arrays_under_mirrored_strategy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")

    def trained(data, **kwargs):
        with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(*data, epochs=2, shuffle=False, verbose=0, **kwargs)
        return model.get_weights()

    from_dataset = trained((distribute.input_dataset(x, y, batch_size=8, shuffle=False),))
    from_arrays = trained((x, y), batch_size=8)
    for a, b in zip(from_dataset, from_arrays):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


class _Counting(keras.utils.PyDataset):
    """10 samples x[i] = [i, i], y[i] = 10 * i in batches of 4: the last batch holds 2."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        ids = np.arange(4 * index, min(4 * index + 4, 10))
        return np.stack([ids, ids], axis=1).astype("float32"), 10 * ids


def test_input_dataset_of_a_pydataset_drops_its_partial_batch():
    dataset = distribute.input_dataset(_Counting())
    assert [spec.shape.as_list() for spec in dataset.element_spec] == [[4, 2], [4]]
    assert [b[1].tolist() for b in _batches(dataset)] == [[0, 10, 20, 30], [40, 50, 60, 70]]
    with pytest.raises(ValueError, match="drop_remainder=True"):
        distribute.input_dataset(_Counting(), drop_remainder=False)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"y": np.zeros(10)}, "y"), ({"batch_size": 4}, "batch_size"), ({"shuffle": True}, "shuffle"),
     ({"seed": 3}, "seed"), ({"sample_weight": np.ones(10)}, "sample_weight")],
)
def test_input_dataset_of_a_pydataset_refuses_array_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be None when x is a PyDataset"):
        distribute.input_dataset(_Counting(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"x": np.zeros(4)}, ValueError, "batch_size is required"),
        ({"x": np.zeros(4), "batch_size": 0}, ValueError, "`batch_size` must be an int >= 1"),
        ({"x": np.zeros(4), "batch_size": 8}, ValueError, "batch_size=8 is larger than the 4 samples"),
        ({"x": np.zeros(4), "y": np.zeros(5), "batch_size": 2}, ValueError, "x: 4, y: 5"),
        ({"x": np.zeros(4), "sample_weight": np.ones(4), "batch_size": 2}, ValueError, "`sample_weight` needs `y`"),
        ({"x": np.zeros(4), "batch_size": 2, "shuffle": 1}, TypeError, "`shuffle` must be True or False; received shuffle=1 of type int. None means True."),
        ({"x": np.zeros(4), "batch_size": 2, "drop_remainder": None}, TypeError, "`drop_remainder` must be True or False"),
        ({"x": np.zeros(4), "batch_size": 2, "seed": 1.5}, TypeError, "`seed` must be an int"),
        ({"x": np.float32(1), "batch_size": 2}, ValueError, "x must hold arrays with a sample axis"),
    ],
)
def test_input_dataset_rejects_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        distribute.input_dataset(**kwargs)
