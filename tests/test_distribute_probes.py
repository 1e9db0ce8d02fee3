"""auto_strategy's TPU probes are bounded, and a failed probe leaves the process able to go on.

Addresses are real sockets on 127.0.0.1: a port that completes the TCP handshake and then stays
silent (the kernel accepts for a listening socket that never calls accept), a port that greets
like a gRPC server (an HTTP/2 SETTINGS frame), one that answers HTTP/1.1, and one that hangs up.
TensorFlow's TPU entry points are recorders (as in test_distribute_strategy.py), except in the last
test, which connects a fresh process to a real TensorFlow gRPC server that has no TPU.
"""

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import tensorflow as tf

from keras_trainx import distribute
from keras_trainx.distribute import strategy as distribute_strategy

SETTINGS_FRAME = bytes([0, 0, 0, 0x4, 0, 0, 0, 0, 0])
REAL_GPU_DEVICES = distribute_strategy._gpu_devices  # before the autouse fixture replaces it


@pytest.fixture(autouse=True)
def bare_machine(monkeypatch, tmp_path):
    for name in ("TF_CONFIG",) + distribute_strategy._TPU_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    pci = tmp_path / "pci"
    pci.mkdir()
    monkeypatch.setattr(distribute_strategy, "_PCI_DEVICES", pci)
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: [])


@pytest.fixture
def tf_calls(monkeypatch):
    """Recorders in place of TensorFlow's TPU entry points; `tf_calls.block[name]` makes one wait."""
    class Calls(list):
        block = {}

    calls = Calls()
    block = calls.block = {}
    release = threading.Event()

    def record(name, resolver):
        calls.append((name, resolver.tpu))
        if name in block:
            release.wait(60)

    class Resolver:
        def __init__(self, tpu=None):
            self.tpu = tpu
            record("TPUClusterResolver", self)

    class TPUStrategy:
        num_replicas_in_sync = 8

        def __init__(self, resolver):
            calls.append(("TPUStrategy", resolver.tpu))

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: record("connect", r))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: record("initialize", r))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", TPUStrategy)
    yield calls
    release.set()


def _server(reply):
    """A 127.0.0.1 server thread that sends `reply` to each connection (None: accept, stay silent)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    stop = threading.Event()
    held = []

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            held.append(connection)
            if reply is not None:
                connection.sendall(reply)
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, stop, held


@pytest.fixture(params=[None, b"HTTP/1.1 400 Bad Request\r\n\r\n", SETTINGS_FRAME, b""],
                ids=["silent", "http1", "grpc", "hangs-up"])
def server(request):
    for port in _port(request.param):
        yield request.param, port


def _port(reply):
    server, stop, held = _server(reply)
    yield server.getsockname()[1]
    stop.set()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def silent_port():
    yield from _port(None)


@pytest.fixture
def greeting_port():
    yield from _port(SETTINGS_FRAME)


def _bounded(function, limit_s=60):
    """Runs `function` in a thread; fails the test (instead of hanging it) if it does not return."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still waiting after {limit_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_probe_tells_grpc_servers_from_the_rest(server):
    reply, port = server
    address = f"grpc://127.0.0.1:{port}"
    if reply == SETTINGS_FRAME:
        assert _bounded(lambda: distribute_strategy._probe_grpc(address, 2.0)) is None
        return
    expected = {
        None: (TimeoutError, f"127.0.0.1:{port} accepted a TCP connection but sent no gRPC (HTTP/2) greeting "
                             "within 0.5 s; it is not a TPU's gRPC endpoint (port 8470 on a TPU node)"),
        b"": (ConnectionError, f"127.0.0.1:{port} closed the connection without a gRPC (HTTP/2) greeting; it is "
                               "not a TPU's gRPC endpoint (port 8470 on a TPU node)"),
    }.get(reply, (ConnectionError, f"127.0.0.1:{port} answered, but not as a gRPC server (no HTTP/2 SETTINGS"))
    with pytest.raises(expected[0]) as info:
        _bounded(lambda: distribute_strategy._probe_grpc(address, 0.5))
    assert str(info.value).startswith(expected[1])


def test_silent_explicit_tpu_is_an_error_naming_the_address_and_the_fix(tf_calls, silent_port):
    address = f"grpc://127.0.0.1:{silent_port}"
    with pytest.raises(RuntimeError) as info:
        _bounded(lambda: distribute.auto_strategy(tpu=address, probe_timeout=0.5))
    assert str(info.value) == (
        f"auto_strategy could not reach the TPU given as tpu={address!r}: TimeoutError: 127.0.0.1:{silent_port} "
        "accepted a TCP connection but sent no gRPC (HTTP/2) greeting within 0.5 s; it is not a TPU's gRPC "
        "endpoint (port 8470 on a TPU node). Check the TPU name or address (and that it is running), or pass "
        "tpu=None to use the devices of this machine."
    )
    assert tf_calls == []  # TensorFlow never saw the address


def test_silent_colab_tpu_address_is_passed_over(tf_calls, silent_port, monkeypatch, caplog):
    monkeypatch.setenv("COLAB_TPU_ADDR", f"127.0.0.1:{silent_port}")
    monkeypatch.setattr(distribute_strategy, "_gpu_devices", lambda: ["/device:GPU:0"])
    with caplog.at_level(logging.INFO, logger="keras_trainx"):
        strategy = _bounded(lambda: distribute.auto_strategy(probe_timeout=0.5))
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert tf_calls == []
    assert [r.getMessage() for r in caplog.records if r.name == "keras_trainx"] == [
        f"auto_strategy: OneDeviceStrategy with 1 replica(s) (1 GPU; TPU from COLAB_TPU_ADDR='127.0.0.1:{silent_port}' "
        f"unreachable, passed over: TimeoutError: 127.0.0.1:{silent_port} accepted a TCP connection but sent no "
        "gRPC (HTTP/2) greeting within 0.5 s; it is not a TPU's gRPC endpoint (port 8470 on a TPU node))"
    ]


def test_greeting_tpu_address_goes_on_to_tensorflow(tf_calls, greeting_port):
    address = f"grpc://127.0.0.1:{greeting_port}"
    strategy = _bounded(lambda: distribute.auto_strategy(tpu=address, probe_timeout=2.0))
    assert type(strategy).__name__ == "TPUStrategy"
    assert tf_calls == [("TPUClusterResolver", address), ("connect", address), ("initialize", address),
                        ("TPUStrategy", address)]


@pytest.mark.parametrize("stuck", ["connect", "initialize"])
def test_tensorflow_stuck_connecting_is_bounded_and_says_it_cannot_fall_back(tf_calls, monkeypatch, stuck):
    tf_calls.block[stuck] = True
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    with pytest.raises(RuntimeError) as info:
        _bounded(lambda: distribute.auto_strategy(connect_timeout=0.3))
    stage = {"connect": "connecting to", "initialize": "initializing"}[stuck]
    assert str(info.value).startswith(
        f"TensorFlow was still {stage} TPU 'my-tpu' after connect_timeout=0.3 s. The unfinished connection "
        "blocks TensorFlow in this process, so auto_strategy cannot fall back to other devices: restart the "
        "process without the TPU"
    )


def test_tpu_name_that_never_resolves_is_passed_over(tf_calls, monkeypatch, caplog):
    tf_calls.block["TPUClusterResolver"] = True
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    with caplog.at_level(logging.INFO, logger="keras_trainx"):
        strategy = _bounded(lambda: distribute.auto_strategy(connect_timeout=0.3))
    assert strategy is tf.distribute.get_strategy()
    assert tf_calls == [("TPUClusterResolver", "my-tpu")]
    assert [r.getMessage() for r in caplog.records if r.name == "keras_trainx"] == [
        "auto_strategy: the default strategy with 1 replica(s) (no TPU, cluster or GPU found; TPU from "
        "TPU_NAME='my-tpu' unreachable, passed over: TimeoutError: resolving TPU 'my-tpu' took longer than "
        "connect_timeout=0.3 s)"
    ]


def test_gpu_detection_counts_only_this_machines_gpus(monkeypatch):
    """After a TPU connection failed half-way TensorFlow lists the remote worker's devices too."""
    devices = [tf.config.LogicalDevice("/device:GPU:0", "GPU"),
               tf.config.LogicalDevice("/job:worker/replica:0/task:0/device:GPU:0", "GPU"),
               tf.config.LogicalDevice("/job:localhost/replica:0/task:0/device:GPU:1", "GPU")]
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: devices)
    assert REAL_GPU_DEVICES() == ["/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1"]


FAILED_TPU_SCRIPT = textwrap.dedent("""
    import logging, os, socket, sys
    import tensorflow as tf
    probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
    server = tf.distribute.Server(tf.train.ClusterSpec({"worker": [f"127.0.0.1:{port}"]}),
                                  job_name="worker", task_index=0, start=True)
    os.environ["TPU_NAME"] = f"grpc://127.0.0.1:{port}"
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from keras_trainx import distribute
    strategy = distribute.auto_strategy(probe_timeout=5, connect_timeout=60)
    with strategy.scope():
        total = tf.reduce_sum(tf.ones([3]))
    print("devices", sorted(d.name for d in tf.config.list_logical_devices("CPU")))
    print("result", float(total), total.device)
""")


def test_real_grpc_server_without_tpu_is_passed_over_and_the_process_goes_on(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.path.dirname(os.path.dirname(distribute_strategy.__file__)))
    for name in ("TF_CONFIG",) + distribute_strategy._TPU_ENVIRONMENT:
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", FAILED_TPU_SCRIPT], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    chosen = [line for line in lines if line.startswith("auto_strategy:")]
    assert len(chosen) == 1 and chosen[0].startswith(
        "auto_strategy: the default strategy with 1 replica(s) (no TPU, cluster or GPU found; TPU from TPU_NAME="
    )
    assert "passed over: NotFoundError: TPUs not found in the cluster" in chosen[0]
    # The remote worker's CPU is listed now, but the work stays on this machine.
    assert "devices ['/device:CPU:0', '/job:worker/replica:0/task:0/device:CPU:0']" in lines
    assert "result 3.0 /job:localhost/replica:0/task:0/device:CPU:0" in lines
