"""Peak memory of a training step, as TensorFlow's allocators count it, on the devices a model uses.

`tf.config.experimental.get_memory_info(device)["peak"]` is the most memory the device's allocator
held at once since `reset_memory_stats(device)`: tensors, variables, optimizer slots and
accumulators (not the Python process or TensorFlow's own code). GPUs and TPUs always keep these
statistics; on a CPU TensorFlow's oneDNN allocator keeps them (the default on x86-64 Linux), the
plain one does not (`TF_ENABLE_ONEDNN_OPTS=0`): then `peak_memory_available` is False.

Process memory (resident set size) does not serve on a CPU: TensorFlow's CPU allocator keeps the
memory it freed, so a probe after a larger one shows no growth at all.
"""

import keras
import tensorflow as tf


def memory_devices(model: keras.Model) -> tuple[str, ...]:
    """The devices `model` trains on, as `"GPU:0"`-style names.

    The replicas of the model's `tf.distribute` strategy; with no strategy, the device TensorFlow
    places operations on: the first GPU, else the CPU.
    """
    strategy = model.distribute_strategy
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has no device list
        gpus = tf.config.list_logical_devices("GPU")
        devices = (gpus[0].name if gpus else "/device:CPU:0",)
    specs = [tf.DeviceSpec.from_string(device) for device in devices]
    return tuple(f"{spec.device_type}:{spec.device_index or 0}" for spec in specs)


def peak_memory_available(devices: tuple[str, ...]) -> bool:
    """Whether TensorFlow keeps allocator statistics for every one of `devices`."""
    try:
        for device in devices:
            tf.config.experimental.get_memory_info(device)
    except ValueError:  # "Allocator stats not available for device"
        return False
    return True


def reset_peak_memory(devices: tuple[str, ...]) -> None:
    """Makes each device's peak start again from the memory held now."""
    for device in devices:
        tf.config.experimental.reset_memory_stats(device)


def peak_memory(devices: tuple[str, ...]) -> int:
    """The largest peak, in bytes, of `devices` since `reset_peak_memory`.

    Raises `ValueError` when TensorFlow keeps no statistics for one of them.

    Example:

    >>> import tensorflow as tf
    >>> devices = ("CPU:0",)
    >>> if peak_memory_available(devices):
    ...     reset_peak_memory(devices)
    ...     ones = tf.ones([1024, 1024])  # 4 MiB
    ...     assert peak_memory(devices) >= 4 * 2**20
    """
    return max(int(tf.config.experimental.get_memory_info(device)["peak"]) for device in devices)
