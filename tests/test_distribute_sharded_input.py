"""Sharded input: under a multi-worker strategy each worker augments only its share of every batch.

Two worker processes on 127.0.0.1 (sharded_input_worker.py, started by the harness of
test_distribute_multiworker.py, with its deadline) train with fit_accumulated on an
`AugmentedSequence` (a last batch of 1 sample: one worker's share of it is empty) and on its
`to_tf_dataset()`, with accum_steps > 1 and a partial last window. Each counts its transform calls:
exactly its rows of every batch (`np.array_split`) plus the look at the first and last batch that
fixes the dataset's element spec. Both end with the weights of one process trained alone. The
single-process tests check that the shards put together are the sequence's batches, also when built
by worker processes.
"""

import pathlib

import albumentations as A
import numpy as np
import pytest
import tensorflow as tf

import sharded_input_worker as worker
from test_distribute_multiworker import DEADLINE_S, _run_workers

import keras_trainx
from keras_trainx.data.sequence import workers_dataset
from keras_trainx.data.shard import SequenceShard
from keras_trainx.distribute.sharding import sharded_input

WORKERS = 2


def batch_sizes(path):
    """The global batches of one epoch: the dataset path drops the partial last batch."""
    full, last = divmod(worker.NUM_SAMPLES, worker.BATCH_SIZE)
    return [worker.BATCH_SIZE] * full + ([last] if last and path == "sequence" else [])


def rows(index, size):
    """Worker `index`'s rows of a batch of `size`; an empty share still augments one sample."""
    return max(1, np.array_split(np.arange(size), WORKERS)[index].size)


def expected_calls(path, index):
    sizes = batch_sizes(path)
    per_epoch = sum(rows(index, size) for size in sizes)
    look = rows(index, sizes[0]) + rows(index, sizes[-1])  # the worker dataset's element spec
    if path == "dataset":
        look += sizes[0] + sizes[-1]  # to_tf_dataset() looks at the whole first and last batch
    return worker.EPOCHS * per_epoch + look


def calls(count_path):
    return pathlib.Path(count_path).stat().st_size


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Each path trained in this process alone (no strategy): weights, updates, transform calls."""
    directory = tmp_path_factory.mktemp("one_process")
    results = {}
    for path in worker.PATHS:
        count_path = worker.count_path(directory / "alone", path)
        model = worker.train(path, count_path, tf.distribute.get_strategy())
        results[path] = model.get_weights(), int(model.optimizer.iterations), calls(count_path)
    return results


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("two_workers")
    outputs = [directory / f"worker{i}.npz" for i in range(WORKERS)]
    _run_workers(outputs, script=pathlib.Path(worker.__file__), deadline_s=2 * DEADLINE_S)
    return outputs


@pytest.mark.parametrize("path", worker.PATHS)
def test_each_worker_augments_its_share_and_training_equals_one_process(path, two_workers, one_process):
    weights, iterations, calls_alone = one_process[path]
    assert iterations == worker.EPOCHS * {"sequence": 3, "dataset": 2}[path]  # windows 2,2,1 | 3,1
    epoch_samples = sum(batch_sizes(path))
    keras_look = 2 * worker.BATCH_SIZE  # Keras' or to_tf_dataset()'s look at two whole batches
    assert calls_alone == worker.EPOCHS * epoch_samples + keras_look
    results = [np.load(output) for output in two_workers]
    for index, result in enumerate(results):
        assert int(result["replicas"]) == WORKERS
        assert int(result[f"{path}_iterations"]) == iterations
        count = calls(worker.count_path(two_workers[index], path))
        assert count == expected_calls(path, index)
        for i, expected in enumerate(weights):
            np.testing.assert_allclose(result[f"{path}_weight_{i}"], expected, rtol=0, atol=1e-6)
    for i in range(len(weights)):
        np.testing.assert_array_equal(results[0][f"{path}_weight_{i}"], results[1][f"{path}_weight_{i}"])


def sequence(count_path, samples=11, **kwargs):
    x, y = worker.images()
    return keras_trainx.AugmentedSequence(
        x[:samples], y[:samples], sample_weight=np.arange(samples) / 10, batch_size=4, seed=3,
        transform=[A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.8), worker.CountCalls(str(count_path))],
        **kwargs)


@pytest.mark.parametrize("count", [2, 4])
def test_shards_put_together_are_the_batches(tmp_path, count):
    seq = sequence(tmp_path / "calls")  # batches of 4, 4, 3: with 4 shards the last one's fourth is empty
    shards = [SequenceShard(seq, index, count) for index in range(count)]
    for epoch in (0, 1):
        for index in range(len(seq)):
            parts = [shard.epoch_batch(epoch, index) for shard in shards]
            for got, expected in zip(zip(*parts), seq.epoch_batch(epoch, index)):
                np.testing.assert_array_equal(np.concatenate(got), expected)
    if count == 4:
        empty = shards[3].epoch_batch(0, 2)
        assert [a.shape for a in empty] == [(0, 8, 8, 3), (0,), (0,)]
        assert [a.dtype for a in empty] == [np.uint8, *(a.dtype for a in seq.epoch_batch(0, 2)[1:])]


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_a_workers_dataset_builds_only_its_share(tmp_path, use_multiprocessing):
    # 33 samples in batches of 4: 8 whole batches and one of 1 sample, of which shard 1 of 2 has none
    seq = sequence(tmp_path / "calls", samples=33, workers=1, use_multiprocessing=use_multiprocessing)
    dataset = workers_dataset(SequenceShard(seq, 1, 2), prefetch=0, static_batch=False)
    assert dataset.element_spec[0].shape.as_list() == [None, 8, 8, 3]
    batches = list(dataset)
    alone = sequence(tmp_path / "alone", samples=33)
    for index, batch in enumerate(batches):
        for got, expected in zip(batch, alone.epoch_batch(0, index)):
            np.testing.assert_array_equal(got.numpy(), expected[2:4] if index < 8 else expected[:0])
    share = 8 * 2 + 1  # the empty share of the last batch is built from one sample
    look = 2 + 1  # the shard's first and last batch, for the element spec
    if use_multiprocessing:
        # the look's two requests and the pass's last one each ask for 2 * workers batches ahead (of at
        # most 2 rows), which the pool builds again when the pass asks for them or never uses
        assert share + look <= calls(tmp_path / "calls") <= share + look + 3 * (2 * seq.workers) * 2
    else:
        assert calls(tmp_path / "calls") == share + look
    del dataset


def test_one_machine_keeps_kerass_input():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    seq = keras_trainx.AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), batch_size=2, seed=0)
    assert sharded_input(seq, strategy) is seq
    with pytest.raises(ValueError, match="one replica per worker; this worker has 2"):
        keras_trainx.distribute.shard_sequence(seq, strategy)


def test_shard_sequence_refuses_other_inputs():
    with pytest.raises(TypeError, match="AugmentedSequence or a dataset from its to_tf_dataset"):
        keras_trainx.distribute.shard_sequence(np.zeros((4, 2)))
    seq = keras_trainx.AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), batch_size=2, seed=0)
    with pytest.raises(TypeError, match="tf.distribute.Strategy or None"):
        keras_trainx.distribute.shard_sequence(seq, "mirrored")
    with pytest.raises(ValueError, match="prefetch"):
        keras_trainx.distribute.shard_sequence(seq, prefetch=-5)
