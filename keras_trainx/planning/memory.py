"""Peak memory of a training step, as TensorFlow's allocators count it, on the devices a model uses.

`tf.config.experimental.get_memory_info(device)["peak"]` is the most memory the device's allocator
held at once since `reset_memory_stats(device)`: tensors, variables, optimizer slots and
accumulators (not the Python process or TensorFlow's own code). GPUs and TPUs always keep these
statistics, counting every tensor. On a CPU it depends on the allocator (measured, TensorFlow 2.21):

- TensorFlow's BFC allocator counts every tensor; it serves the CPU when the environment variable
  `TF_CPU_ALLOCATOR_USE_BFC=true` is set before TensorFlow is imported, whatever oneDNN's setting.
- oneDNN's allocator (on by default only on x86-64 CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX,
  as TensorFlow 2.9's release notes say, or with `TF_ENABLE_ONEDNN_OPTS=1`) counts only tensors of
  256 KiB and more: 100 tensors of 100 KB read as 0 bytes.
- The plain allocator (oneDNN off: `TF_ENABLE_ONEDNN_OPTS=0`, or by default on other CPUs, such as
  AVX2-only ones) keeps no statistics at all.

`statistics_gap` says which, so that a memory budget is checked only against complete counts.
Process memory (resident set size) does not serve on a CPU: TensorFlow's CPU allocator keeps the
memory it freed, so a probe after a larger one shows no growth at all.
"""

import os

import keras
import tensorflow as tf

#: What makes a CPU's allocator statistics complete.
CPU_STATISTICS_FIX = ("set the environment variable TF_CPU_ALLOCATOR_USE_BFC=true before TensorFlow is imported "
                      "(e.g. `TF_CPU_ALLOCATOR_USE_BFC=true python train.py`): TensorFlow's BFC allocator then "
                      "counts every tensor on the CPU")


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


def statistics_gap(devices: tuple[str, ...]) -> str:
    """Why TensorFlow's allocator statistics do not count every tensor on `devices`, or `""`.

    A CPU is tested by allocating a 1 KiB tensor there: an allocator that counts every tensor
    shows it in `get_memory_info(device)["current"]`, oneDNN's does not.

    Example:

    >>> gap = statistics_gap(("CPU:0",))
    >>> gap == "" or "TF_CPU_ALLOCATOR_USE_BFC=true" in gap
    True
    """
    for device in devices:
        try:
            before = tf.config.experimental.get_memory_info(device)["current"]
        except ValueError:  # "Allocator stats not available for device"
            fix = f": {CPU_STATISTICS_FIX}" if device.startswith("CPU") else ""
            return (f"{device} keeps no allocator statistics here (TF_ENABLE_ONEDNN_OPTS is "
                    f"{_setting('TF_ENABLE_ONEDNN_OPTS')}){fix}")
        if device.startswith("CPU"):
            with tf.device(device):
                probe = tf.random.uniform([256])
            counted = tf.config.experimental.get_memory_info(device)["current"] - before
            del probe
            if counted < 1024:
                return (f"{device}'s allocator here (oneDNN's; TF_ENABLE_ONEDNN_OPTS is "
                        f"{_setting('TF_ENABLE_ONEDNN_OPTS')}) leaves tensors under 256 KiB out of its statistics: "
                        f"{CPU_STATISTICS_FIX}")
    return ""


def _setting(name: str) -> str:
    value = os.environ.get(name)
    return "not set" if value is None else repr(value)


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
    >>> if not statistics_gap(devices):
    ...     reset_peak_memory(devices)
    ...     ones = tf.ones([1024, 1024])  # 4 MiB
    ...     assert peak_memory(devices) >= 4 * 2**20
    """
    return max(int(tf.config.experimental.get_memory_info(device)["peak"]) for device in devices)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (`os.sysconf`), or `None` where the system does not say.

    Example:

    >>> physical_memory() is None or physical_memory() > 2**20
    True
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
