"""auto_strategy() inside an `srun` step: the cluster read from srun's variables, and two tasks training one model.

No Slurm here: the variables srun sets are set by hand, and `scontrol` is a stub script written into
tmp_path and put first on PATH (it records how it was called and prints host names). The two-task test
runs test_distribute_multiworker.py's worker twice as the two tasks of a step on this machine.
"""

import logging
import os
import socket

import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.distribute import auto_strategy, slurm
from keras_trainx.distribute import strategy as distribute_strategy
from test_distribute_multiworker import _plain_environment, _run_workers, single_process_reference  # noqa: F401

# Task 1 of a step of 2 tasks, both on node "localhost", in job 1234567.
STEP = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_TASKS_PER_NODE": "2", "SLURMD_NODENAME": "localhost", "SLURM_JOB_ID": "1234567"}
JOB_PORT = 20000 + 40 * 567  # 1234567 % 1000 = 567: the job's slot of 40 ports


@pytest.fixture
def srun_task(monkeypatch, tmp_path):
    """This process as task 1 of STEP, with no scontrol on PATH and no TF_CONFIG or port variable."""
    for name in ("TF_CONFIG", slurm.PORT_VARIABLE) + distribute_strategy._TPU_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in STEP.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return monkeypatch


def _stub_scontrol(folder, hosts, status=0):
    """An `scontrol` in folder/bin that appends its arguments to folder/scontrol.calls and prints `hosts`."""
    (folder / "bin").mkdir(exist_ok=True)
    stub = folder / "bin" / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{folder / "scontrol.calls"}"\n'
                    + "".join(f"echo {host}\n" for host in hosts)
                    + ("echo 'scontrol: error: Invalid hostlist' >&2\n" if status else "") + f"exit {status}\n")
    stub.chmod(0o755)
    return folder / "scontrol.calls"


def test_two_tasks_on_one_node_ports_from_the_job_id(srun_task):
    resolver, description = slurm.slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": [f"localhost:{JOB_PORT}", f"localhost:{JOB_PORT + 1}"]}
    assert (resolver.task_type, resolver.task_id, resolver.rpc_layer) == ("worker", 1, "grpc")
    assert resolver.num_accelerators() == {"GPU": 0}
    assert description == (f"Slurm step of 2 tasks on 1 node(s): this is task 1 at localhost:{JOB_PORT + 1}, "
                           "ports from SLURM_JOB_ID=1234567, 0 GPU(s) per task")


def test_block_placement_over_nodes_in_slurms_order_and_the_port_variable(srun_task):
    srun_task.setenv("SLURM_STEP_NUM_TASKS", "5")
    srun_task.setenv("SLURM_PROCID", "2")
    srun_task.setenv("SLURM_STEP_NODELIST", "node[9-10],gpu-[008-009].cluster")
    srun_task.setenv("SLURM_STEP_TASKS_PER_NODE", "2,1(x3)")
    srun_task.setenv("SLURMD_NODENAME", "node10")
    srun_task.setenv(slurm.PORT_VARIABLE, "31000")
    resolver, description = slurm.slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": [
        "node9:31000", "node9:31001", "node10:31000", "gpu-008.cluster:31000", "gpu-009.cluster:31000"]}
    assert resolver.task_id == 2
    assert "this is task 2 at node10:31000, ports from KERAS_TRAINX_SLURM_PORT=31000" in description


def test_scontrol_expands_the_nodelist_when_on_path(srun_task, tmp_path):
    calls = _stub_scontrol(tmp_path, ["alpha", "beta"])
    srun_task.setenv("SLURM_STEP_NODELIST", "alpha,beta")
    srun_task.setenv("SLURM_STEP_TASKS_PER_NODE", "1(x2)")
    srun_task.setenv("SLURMD_NODENAME", "beta")
    resolver, _ = slurm.slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": [f"alpha:{JOB_PORT}", f"beta:{JOB_PORT}"]}
    assert calls.read_text() == "show hostnames alpha,beta\n"


def test_a_failing_scontrol_names_the_nodelist(srun_task, tmp_path):
    _stub_scontrol(tmp_path, [], status=1)
    with pytest.raises(ValueError) as error:
        slurm.slurm_cluster_resolver()
    assert str(error.value).startswith("SLURM_STEP_NODELIST='localhost': `scontrol show hostnames` exited with "
                                       "status 1 and 0 host(s): 'scontrol: error: Invalid hostlist'.")


def test_the_gpus_slurm_gave_the_task_are_its_accelerators(srun_task):
    listed = tf.config.list_physical_devices
    srun_task.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: ["GPU:0", "GPU:1"] if kind == "GPU" else listed(kind))
    srun_task.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    resolver, description = slurm.slurm_cluster_resolver()
    assert resolver.num_accelerators() == {"GPU": 2} and description.endswith("2 GPU(s) per task")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"  # as Slurm set it


@pytest.mark.parametrize("tasks", [None, "1"])
def test_no_step_or_a_step_of_one_task_is_no_cluster(srun_task, tasks):
    if tasks is None:
        srun_task.delenv("SLURM_STEP_NUM_TASKS")
    else:
        srun_task.setenv("SLURM_STEP_NUM_TASKS", tasks)
    assert slurm.slurm_cluster_resolver() is None


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SLURM_STEP_NUM_TASKS", "two", "SLURM_STEP_NUM_TASKS must be an integer >= 1; received "
                                        "SLURM_STEP_NUM_TASKS='two'."),
        ("SLURM_STEP_NUM_TASKS", "0", "SLURM_STEP_NUM_TASKS must be an integer >= 1; received "
                                      "SLURM_STEP_NUM_TASKS='0'."),
        ("SLURM_PROCID", "-1", "SLURM_PROCID must be an integer >= 0; received SLURM_PROCID='-1'."),
        ("SLURM_PROCID", "2", "SLURM_PROCID=2 must be below SLURM_STEP_NUM_TASKS=2."),
        ("SLURM_PROCID", None, "SLURM_PROCID is not set, but SLURM_STEP_NUM_TASKS=2 says this is a task of a "
                               "Slurm step."),
        ("SLURM_STEP_NODELIST", "", "SLURM_STEP_NODELIST is empty; it must name the step's nodes."),
        ("SLURM_STEP_NODELIST", "node[1-x]", "SLURM_STEP_NODELIST='node[1-x]': cannot expand 'node[1-x]' without "
                                             "scontrol (not on PATH)"),
        ("SLURM_STEP_NODELIST", "node[3-1]", "SLURM_STEP_NODELIST='node[3-1]': '3-1' is not a range like 01-04."),
        ("SLURM_STEP_NODELIST", "a,,b", "SLURM_STEP_NODELIST='a,,b' has an empty item."),
        ("SLURM_STEP_NODELIST", "rack[1-2]n[1-2]", "SLURM_STEP_NODELIST='rack[1-2]n[1-2]': cannot expand "
                                                   "'rack[1-2]n[1-2]' without scontrol"),
        ("SLURM_STEP_NODELIST", "a,b", "SLURM_STEP_TASKS_PER_NODE='2' gives 1 node(s), SLURM_STEP_NODELIST='a,b' 2."),
        ("SLURM_STEP_TASKS_PER_NODE", "2(x)", "SLURM_STEP_TASKS_PER_NODE='2(x)': '2(x)' is not a task count like 2 "
                                              "or 2(x3)."),
        ("SLURM_STEP_TASKS_PER_NODE", "3", "SLURM_STEP_TASKS_PER_NODE='3' places 3 tasks, SLURM_STEP_NUM_TASKS=2."),
        ("SLURMD_NODENAME", "elsewhere", "SLURMD_NODENAME='elsewhere', but block placement over SLURM_STEP_NODELIST "
                                         "puts task SLURM_PROCID=1 on 'localhost'"),
        ("SLURM_JOB_ID", "abc", "SLURM_JOB_ID must be an integer >= 0; received SLURM_JOB_ID='abc'. Set "
                                "KERAS_TRAINX_SLURM_PORT to the first port instead."),
        ("KERAS_TRAINX_SLURM_PORT", "80", "KERAS_TRAINX_SLURM_PORT must be an integer >= 1024; received "
                                          "KERAS_TRAINX_SLURM_PORT='80'. Set it to a free port in 1024..65534."),
        ("KERAS_TRAINX_SLURM_PORT", "65535", "KERAS_TRAINX_SLURM_PORT=65535 leaves no port for the node's 2 tasks: "
                                             "set it to a free port in 1024..65534."),
    ],
)
def test_malformed_variables_are_errors_naming_them(srun_task, name, value, message):
    if value is None:
        srun_task.delenv(name)
    else:
        srun_task.setenv(name, value)
    with pytest.raises(ValueError) as error:
        auto_strategy()
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_auto_strategy_builds_multi_worker_over_the_step_and_says_so(srun_task, caplog):
    built = []

    class MultiWorker:
        num_replicas_in_sync = 2

        def __init__(self, cluster_resolver):
            built.append(cluster_resolver)

    srun_task.setattr(tf.distribute, "MultiWorkerMirroredStrategy", MultiWorker)
    srun_task.setattr(distribute_strategy, "_gpu_devices", lambda: [])
    with caplog.at_level(logging.INFO, logger="keras_trainx"):
        assert isinstance(auto_strategy(), MultiWorker)
    assert built[0].cluster_spec().as_dict() == {"worker": [f"localhost:{JOB_PORT}", f"localhost:{JOB_PORT + 1}"]}
    assert caplog.messages == [
        "auto_strategy: MultiWorkerMirroredStrategy with 2 replica(s) (Slurm step of 2 tasks on 1 node(s): this is "
        f"task 1 at localhost:{JOB_PORT + 1}, ports from SLURM_JOB_ID=1234567, 0 GPU(s) per task)"]


def test_tf_config_comes_before_slurm(srun_task, caplog):
    srun_task.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                                  '"task": {"type": "worker", "index": 0}}')
    srun_task.setenv("SLURM_STEP_NODELIST", "")  # would be an error, were it read
    srun_task.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: type("S", (), {"num_replicas_in_sync": 2}))
    with caplog.at_level(logging.INFO, logger="keras_trainx"):
        auto_strategy()
    assert caplog.messages[-1].endswith("(TF_CONFIG names 2 tasks)")


def _free_port_pair():
    """A port p such that p and p + 1 were both free a moment ago."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def test_two_srun_tasks_train_one_model(tmp_path, single_process_reference):  # noqa: F811
    """The two tasks of a step on this machine pick MultiWorkerMirroredStrategy with 2 replicas and end
    with the weights of one process training on the big batch."""
    calls = _stub_scontrol(tmp_path, ["localhost"])
    port = _free_port_pair()
    outputs = [tmp_path / "task0.npz", tmp_path / "task1.npz"]
    environments = [
        _plain_environment(**{**STEP, "SLURM_PROCID": str(rank), slurm.PORT_VARIABLE: str(port),
                              "PATH": os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]])})
        for rank in range(2)
    ]
    logs = _run_workers(outputs, environments)
    for rank, log in enumerate(logs):
        assert (
            "keras_trainx: auto_strategy: MultiWorkerMirroredStrategy with 2 replica(s) (Slurm step of 2 tasks on "
            f"1 node(s): this is task {rank} at localhost:{port + rank}, ports from KERAS_TRAINX_SLURM_PORT={port}, "
            "0 GPU(s) per task)"
        ) in log
    assert calls.read_text() == "show hostnames localhost\n" * 2

    reference_weights, reference_loss, _ = single_process_reference
    results = [np.load(output) for output in outputs]
    for result in results:
        assert str(result["strategy_class"]) == "CollectiveAllReduceStrategy" and int(result["replicas"]) == 2
        for i, expected in enumerate(reference_weights):
            np.testing.assert_allclose(result[f"weight_{i}"], expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(result["loss"], reference_loss, rtol=1e-5)
    for i in range(len(reference_weights)):
        np.testing.assert_array_equal(results[0][f"weight_{i}"], results[1][f"weight_{i}"])
