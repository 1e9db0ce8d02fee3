"""find_micro_batch_size: the exact probe sequence and plan against injected out-of-memory errors and a
memory budget, and the model's state restored bit for bit before every probe and after the search.

Out of memory is injected by a layer that raises `tf.errors.ResourceExhaustedError` when its batch
exceeds a limit (eagerly, as TensorFlow raises it from an op). A real allocator failure raises the
same class, but only after TensorFlow's allocator has waited 10 s for memory to be freed, too slow
for the suite. The budget case measures real allocations, in a fresh process: a layer that allocates
4 MiB per sample.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from keras_trainx.planning import micro_batch

MiB = 2**20


class OutOfMemoryAbove(keras.layers.Layer):
    """Passes its input through; raises ResourceExhaustedError (eagerly) when the batch exceeds `limit`."""

    def __init__(self, limit, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def call(self, x):
        if x.shape[0] is not None and x.shape[0] > self.limit:
            raise tf.errors.ResourceExhaustedError(
                None, None, f"OOM when allocating tensor with shape[{x.shape[0]},1000000] (injected)")
        return x


class FourMiBPerSample(keras.layers.Layer):
    """Passes its input through, after allocating a float32 tensor of 4 MiB per sample (filled with a
    value of the input, so that TensorFlow cannot fold it into a constant)."""

    def call(self, x):
        ballast = tf.fill(tf.stack([tf.shape(x)[0], MiB]), tf.reduce_mean(x))
        return x + 0.0 * tf.reduce_sum(ballast)


def trained_model(layer, run_eagerly):
    """A model with BatchNormalization, Dropout (a seed state), Adam and a metric, trained one update."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(3), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"], run_eagerly=run_eagerly)
    x, y = data()
    keras_trainx.fit_accumulated(model, x[:8], y[:8], batch_size=4, accum_steps=2, verbose=0)
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 4)).astype("float32"), rng.normal(size=(40, 1)).astype("float32")


def every_variable(model):
    return [*model.variables, *model.metrics_variables, *model.optimizer.variables]


class StateChecker:
    """Wraps fit_accumulated: checks the whole state equals the initial one before every probe, records calls."""

    def __init__(self, model, monkeypatch):
        self.model = model
        self.variables = every_variable(model)
        self.values = [np.array(v.numpy()) for v in self.variables]
        self.optimizer, self.history = model.optimizer, model.history
        self.calls = []
        real = micro_batch.fit_accumulated

        def probe(model, x, y, **kwargs):
            self.assert_restored()
            self.calls.append((kwargs["batch_size"], kwargs["accum_steps"], len(x)))
            return real(model, x, y, **kwargs)

        monkeypatch.setattr(micro_batch, "fit_accumulated", probe)

    def assert_restored(self):
        assert every_variable(self.model) == self.variables  # no variable created or dropped
        for variable, value in zip(self.variables, self.values):
            assert np.array_equal(variable.numpy(), value), variable.path
        assert self.model.optimizer is self.optimizer and self.model.history is self.history
        assert self.model.stop_training is False


@pytest.mark.parametrize("target, limit, sizes, fitted, plan", [
    # doubling to 32 (out of memory), then the only divisor of 48 between 16 and 32: 24
    (48, 20, [1, 2, 4, 8, 16, 32, 24], [1, 1, 1, 1, 1, 0, 0], (16, 3)),
    # 45 = 3^2 * 5: bisection among its divisors 9 and 15 between 8 and 16
    (45, 10, [1, 2, 4, 8, 16, 9, 15], [1, 1, 1, 1, 0, 1, 0], (9, 5)),
    # 5 fails; the largest divisor below 4 that is known to fit, 3, is probed to measure its peak
    (45, 4, [1, 2, 4, 8, 5, 3], [1, 1, 1, 0, 0, 1], (3, 15)),
    # 46 = 2 * 23: the largest divisor that fits is 2
    (46, 8, [1, 2, 4, 8, 16], [1, 1, 1, 1, 0], (2, 23)),
])
def test_probe_sequence_and_plan_with_injected_out_of_memory(monkeypatch, target, limit, sizes, fitted, plan):
    model = trained_model(OutOfMemoryAbove(limit), run_eagerly=True)
    checker = StateChecker(model, monkeypatch)
    x, y = data()
    result = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=target)
    checker.assert_restored()
    assert [p.micro_batch_size for p in result.probes] == sizes
    assert [int(p.fits) for p in result.probes] == fitted
    assert (result.micro_batch_size, result.accum_steps) == plan
    assert result.micro_batch_size * result.accum_steps == target
    # each probe: two micro-batches of its size (one when it is the whole effective batch), one update
    assert checker.calls == [(s, 1 if s == target else 2, s if s == target else 2 * s) for s in sizes]
    for probe in result.probes:
        assert probe.failure == ("" if probe.fits else
                                 f"out of memory: OOM when allocating tensor with shape[{probe.micro_batch_size},"
                                 "1000000] (injected)")
    assert result.devices == ("CPU:0",)


def test_a_prime_effective_batch_larger_than_what_fits_is_refused_with_targets_that_split(monkeypatch):
    model = trained_model(OutOfMemoryAbove(8), run_eagerly=True)
    checker = StateChecker(model, monkeypatch)
    x, y = data()
    with pytest.raises(ValueError) as error:
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=37)
    assert str(error.value) == (
        "No divisor of effective_batch_size=37 between 2 and 8 (the largest micro-batch that trained) exists: "
        "37 is prime. Accumulating 37 micro-batches of 1 would leave that memory unused; choose an effective "
        "batch size that such a micro-batch divides, e.g. 32 = 8 x 4 or 40 = 8 x 5.")
    assert [call[0] for call in checker.calls] == [1, 2, 4, 8, 16, 12, 10, 9]  # 9 to 15: the largest that fits
    checker.assert_restored()


def test_the_refusal_names_the_largest_micro_batch_that_trains_divisor_or_not(monkeypatch):
    """7 with out of memory above 3: the divisors 1 and 7 leave 3 unprobed; it is probed, fits and is named."""
    layer = OutOfMemoryAbove(100)
    model = trained_model(layer, run_eagerly=True)
    layer.limit = 3
    checker = StateChecker(model, monkeypatch)
    x, y = data()
    with pytest.raises(ValueError) as error:
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=7)
    assert str(error.value) == (
        "No divisor of effective_batch_size=7 between 2 and 3 (the largest micro-batch that trained) exists: "
        "7 is prime. Accumulating 7 micro-batches of 1 would leave that memory unused; choose an effective "
        "batch size that such a micro-batch divides, e.g. 6 = 3 x 2 or 9 = 3 x 3.")
    assert [call[0] for call in checker.calls] == [1, 2, 4, 3]
    checker.assert_restored()


def test_sizes_whose_data_exceeds_physical_memory_are_not_run(monkeypatch):
    """A sample is 20 bytes (4 + 1 float32): with 160 bytes of "physical memory" two micro-batches of 4 fit,
    of 8 do not, and are never allocated; 2**31, whose divisors are powers of 2, gives 4 x 2**29."""
    model = trained_model(OutOfMemoryAbove(100), run_eagerly=True)
    checker = StateChecker(model, monkeypatch)
    monkeypatch.setattr(micro_batch, "physical_memory", lambda: 160)
    x, y = data()
    plan = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=2**31)
    assert (plan.micro_batch_size, plan.accum_steps) == (4, 2**29)
    assert [call[0] for call in checker.calls] == [1, 2, 4]
    assert plan.probes[-1] == micro_batch.MicroBatchProbe(
        8, False, None, "its data (16 samples of 20 bytes, 320 bytes) exceeds the machine's physical memory "
                        "(160 bytes); not run")
    checker.assert_restored()


def test_a_model_that_does_not_train_even_at_one_sample(monkeypatch):
    layer = OutOfMemoryAbove(100)
    model = trained_model(layer, run_eagerly=True)
    layer.limit = 0
    checker = StateChecker(model, monkeypatch)
    x, y = data()
    with pytest.raises(MemoryError, match=r"^Even a micro-batch of 1 does not train: out of memory: OOM when "
                                          r"allocating tensor with shape\[1,1000000\] \(injected\)\."):
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=16)
    checker.assert_restored()


BUDGET_REFUSED = ("memory_budget needs TensorFlow's allocator statistics of every tensor, and {gap}: set the "
                  "environment variable TF_CPU_ALLOCATOR_USE_BFC=true before TensorFlow is imported (e.g. "
                  "`TF_CPU_ALLOCATOR_USE_BFC=true python train.py`): TensorFlow's BFC allocator then counts every "
                  "tensor on the CPU; received memory_budget=1073741824. Or pass memory_budget=None.")


@pytest.mark.parametrize("onednn, bfc, outcome", [
    ("0", None, BUDGET_REFUSED.format(gap="CPU:0 keeps no allocator statistics here (TF_ENABLE_ONEDNN_OPTS is "
                                          "'0')")),
    ("1", None, BUDGET_REFUSED.format(gap="CPU:0's allocator here (oneDNN's; TF_ENABLE_ONEDNN_OPTS is '1') leaves "
                                          "tensors under 256 KiB out of its statistics")),
    ("0", "true", "budget case passed"),
    ("1", "true", "budget case passed"),
], ids=["onednn-off", "onednn-on", "onednn-off-bfc", "onednn-on-bfc"])
def test_memory_budget_under_both_onednn_settings(onednn, bfc, outcome):
    """Each setting in a fresh process (TensorFlow reads them when it loads). Without
    TF_CPU_ALLOCATOR_USE_BFC a budget is refused, saying what to set: the plain allocator (oneDNN off, as
    on AVX2-only CPUs by default) keeps no statistics, oneDNN's leaves tensors under 256 KiB out; with it
    the budget is measured, whatever oneDNN's setting.

    The budget counts everything the device holds, so the case runs in a fresh process: inside the
    full suite, other tests' tensors come and go during the probes by more than the 8 MiB margin.
    """
    script = ("import sys, pytest; sys.path.insert(0, sys.argv[1]); import test_planning_micro_batch as t\n"
              "with pytest.MonkeyPatch.context() as monkeypatch: t.memory_budget_case(monkeypatch)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS=onednn)
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    env.update({"TF_CPU_ALLOCATOR_USE_BFC": bfc} if bfc else {})
    result = subprocess.run([sys.executable, "-c", script, str(pathlib.Path(__file__).parent)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == outcome


def memory_budget_case(monkeypatch):
    """The budget case's assertions, run by the test above in a process of its own: 4 MiB per sample,
    8 samples hold 32 MiB, 12 hold 48 MiB; a 40 MiB budget stops at 8 (of 48 = 8 x 6); a budget of 1 byte
    fits nothing. Prints the refusal instead when the allocator does not count every tensor."""
    model = trained_model(FourMiBPerSample(), run_eagerly=False)
    x, y = data()
    try:
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=8, memory_budget=2**30)
    except ValueError as error:
        print(error)
        return
    with pytest.raises(MemoryError, match=r"^Even a micro-batch of 1 does not train: over the memory budget "):
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=8, memory_budget=1)
    checker = StateChecker(model, monkeypatch)
    budget = tf.config.experimental.get_memory_info("CPU:0")["current"] + 40 * MiB
    result = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=48,
                                                         memory_budget=budget)
    checker.assert_restored()
    assert [p.micro_batch_size for p in result.probes] == [1, 2, 4, 8, 16, 12]
    assert [p.fits for p in result.probes] == [True] * 4 + [False] * 2
    assert (result.micro_batch_size, result.accum_steps, result.memory_budget) == (8, 6, budget)
    assert 8 * 4 * MiB <= result.peak_memory <= budget
    for probe in result.probes:
        assert probe.peak_memory >= probe.micro_batch_size * 4 * MiB
        if not probe.fits:
            assert probe.failure == f"over the memory budget ({probe.peak_memory} bytes)"
    assert "micro-batch 8 x accum_steps 6 = 48; peak memory" in str(result)
    print("budget case passed")


def test_without_complete_statistics_no_peak_is_reported(monkeypatch):
    monkeypatch.setattr(micro_batch, "statistics_gap", lambda devices: "CPU:0 keeps no allocator statistics here")
    model = trained_model(OutOfMemoryAbove(100), run_eagerly=True)
    x, y = data()
    plan = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=2)
    assert plan.peak_memory is None and [p.peak_memory for p in plan.probes] == [None, None]


def test_an_unbuilt_model_is_built_and_keeps_its_initial_weights():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    keras.utils.set_random_seed(0)
    model = Subclassed()
    model.compile(optimizer="adam", loss="mse")
    x, y = data()
    plan = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=4)
    assert (plan.micro_batch_size, plan.accum_steps) == (4, 1)
    keras.utils.set_random_seed(0)
    twin = Subclassed()
    twin(x[:1])
    assert np.array_equal(model.dense.kernel.numpy(), twin.dense.kernel.numpy())
    assert int(model.optimizer.iterations) == 0


def test_under_a_strategy_every_size_is_a_multiple_of_the_replicas(monkeypatch):
    """Two replicas, out of memory above 2 samples per replica: 2 and 4 fit, 8 (4 each) does not; 8 = 4 x 2."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = trained_model(OutOfMemoryAbove(2), run_eagerly=True)
    checker = StateChecker(model, monkeypatch)
    x, y = data()
    result = keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=8)
    checker.assert_restored()
    assert [p.micro_batch_size for p in result.probes] == [2, 4, 8]
    assert [p.fits for p in result.probes] == [True, True, False]
    assert (result.micro_batch_size, result.accum_steps, result.devices) == (4, 2, ("CPU:0", "CPU:1"))
    with pytest.raises(ValueError, match=r"^`effective_batch_size` must be a multiple of the 2 replicas of the "
                                         r"model's strategy \(each micro-batch is split evenly across them\); "
                                         r"received effective_batch_size=25\.$"):
        keras_trainx.planning.find_micro_batch_size(model, x, y, effective_batch_size=25)
