"""`BatchBuilder`: an `AugmentedSequence`'s batches as a pure function of (seed, epoch, sample index).

It holds what a batch is made of (the images, the targets, the albumentations pipeline, the seed, the
batch size and the shuffling) and nothing of Keras or TensorFlow, so that the worker processes of
`use_multiprocessing=True`, which receive it pickled, import only NumPy, OpenCV and albumentations
(and the modules of the user's own transforms). `BatchShare` is the same for one input pipeline's
share of every batch (`keras_trainx.data.shard`).

Every image of a batch must leave the pipeline with the same shape and dtype as the batch's first
one. When one does not, the two samples are augmented again with albumentations recording the
transforms it applies (a sample's augmentation is a pure function of `(seed, epoch, sample index)`),
and the error names the transforms applied to one of the two only (a transform with `p < 1` that
changes the dtype, like `A.ToFloat(p=0.5)`, or the size, like `A.RandomCrop(..., p=0.5)`).
"""

import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from keras_trainx.data.rng import SampleStreams, epoch_permutation
from keras_trainx.data.targets import BatchTargets, Targets


class BatchBuilder:
    """Builds batch `index` of epoch `epoch` of images, targets and an albumentations pipeline.

    Args:
        images: a source of images (`keras_trainx.data.sources`: `len`, `[i]`, `describe(i)`).
        targets: the `Targets` of the images.
        pipeline: the `A.Compose` built by `build_pipeline` (never modified: each thread uses a copy).
        batch_size: images per batch.
        shuffle: reshuffle the sample order every epoch (a pure function of `(seed, epoch)`).
        seed: non-negative int.
        drop_remainder: leave out the last, partial batch.

    Example:

    >>> from keras_trainx.data.pipeline import build_pipeline
    >>> from keras_trainx.data.sources import as_source
    >>> images = as_source(np.ones((5, 2, 2, 3), np.uint8), "x")
    >>> builder = BatchBuilder(images, Targets(5), build_pipeline(None), batch_size=2, shuffle=False,
    ...                        seed=0, drop_remainder=False)
    >>> len(builder), builder.build_batch(0, 2, np.empty)[0].shape
    (3, (1, 2, 2, 3))
    """

    def __init__(self, images: Any, targets: Targets, pipeline: Any, *, batch_size: int, shuffle: bool,
                 seed: int, drop_remainder: bool) -> None:
        self.images, self.targets, self.pipeline = images, targets, pipeline
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_remainder = drop_remainder
        self._orders: dict[int, np.ndarray] = {}
        self._local = threading.local()

    def __len__(self) -> int:
        if self.drop_remainder:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (computed once per epoch; any thread may ask)."""
        order = self._orders.get(epoch)
        if order is None:
            order = (epoch_permutation(self.seed, epoch, len(self.images)) if self.shuffle
                     else np.arange(len(self.images)))
            self._orders = {epoch: order, **{e: o for e, o in self._orders.items() if e == epoch - 1}}
        return order

    def indices(self, index: int, epoch: int) -> np.ndarray:
        """The sample indices (into the images) of batch `index` of `epoch`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches.")
        return self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def _thread_state(self) -> tuple[Any, SampleStreams]:
        """This thread's copy of the pipeline and its random streams (moved to each sample in place).

        The pipeline is given the streams' two generators once: `Compose.set_random_state` only keeps
        references to them, and `SampleStreams.move_to` changes their state, not the objects.
        """
        state = getattr(self._local, "state", None)
        if state is None:
            pipeline, streams = copy.deepcopy(self.pipeline), SampleStreams(self.seed)
            pipeline.set_random_state(streams.generator, streams.python_random)
            state = self._local.state = pipeline, streams
        return state

    def build_batch(self, epoch: int, index: int, empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """Batch `index` of epoch `epoch`, its images written into the array `empty(shape, dtype)` returns.

        Args:
            epoch: non-negative int.
            index: batch index in `[0, len(self))`.
            empty: called once per batch with the images' `(shape, dtype)`; returns an array of that
                shape and dtype (its contents are overwritten), e.g. `np.empty`.

        Returns:
            `(images,)`, `(images, target)` or `(images, target, sample_weight)`.
        """
        return self.build_samples(epoch, self.indices(index, epoch), empty)

    def build_samples(self, epoch: int, ids: np.ndarray, empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """The batch of samples `ids` (a non-empty int array of indices into the images) of `epoch`."""
        pipeline, streams = self._thread_state()
        collected = BatchTargets(self.targets, len(ids))
        images = None
        for j, i in enumerate(ids):
            streams.move_to(epoch, int(i))
            image = self.images[i]
            output = pipeline(image=image, **self.targets.inputs(i, image, self.images.describe))
            result = output["image"]
            if images is None:
                images = empty((len(ids),) + result.shape, result.dtype)
            elif result.shape != images.shape[1:] or result.dtype != images.dtype:
                raise ValueError(
                    f"{self.images.describe(i)} comes out of the pipeline as {result.dtype} {result.shape}, "
                    f"the batch's first image as {images.dtype} {images.shape[1:]}: "
                    f"{self.changed_by((epoch, int(ids[0])), (epoch, int(i)))}"
                )
            images[j] = result
            collected.add(j, output)
        target = collected.result(ids)
        if target is None:
            return (images,)
        if self.targets.sample_weight is not None:
            return images, target, self.targets.sample_weight[ids]
        return images, target

    def applied_transforms(self, epoch: int, sample: int) -> list[str]:
        """The names of the transforms the pipeline applies to sample `sample` (an index into the
        images) in epoch `epoch`: it is augmented again with albumentations recording them
        (`save_applied_params`), so this costs a sample's augmentation; meant for error messages."""
        pipeline, streams = copy.deepcopy(self.pipeline), SampleStreams(self.seed)
        pipeline.save_applied_params = True
        pipeline.set_random_state(streams.generator, streams.python_random)
        streams.move_to(epoch, sample)
        image = self.images[sample]
        output = pipeline(image=image, **self.targets.inputs(sample, image, self.images.describe))
        return [name for name, _ in output["applied_transforms"]]

    def changed_by(self, first: tuple[int, int], second: tuple[int, int]) -> str:
        """A sentence naming the transforms applied to one of two samples only, and the fix.

        Args:
            first, second: `(epoch, sample index)` of the two samples.
        """
        one, other = self.applied_transforms(*first), self.applied_transforms(*second)
        differing = [name for name in dict.fromkeys(one + other) if (name in one) != (name in other)]
        if not differing:
            return ("both went through the same transforms; one of them makes its output's size or dtype "
                    "depend on its input: pass image_size=(height, width) or add a transform with a fixed "
                    "output size (A.Resize, A.RandomResizedCrop...) at the end of the pipeline.")
        return (f"{', '.join(differing)} applied to one of them only (a random draw): a transform that "
                f"changes the dtype or the size must apply to every image (p=1), or the pipeline must "
                f"end with one that fixes them (A.Resize, A.ToFloat...).")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def share_rows(size: int, index: int, count: int) -> slice:
    """Input pipeline `index` of `count`'s rows of a batch of `size` samples (`np.array_split`'s part
    `index`: the first `size % count` pipelines get one row more).

    Example:

    >>> [share_rows(8, i, 3) for i in range(3)]
    [slice(0, 3, None), slice(3, 6, None), slice(6, 8, None)]
    """
    quotient, remainder = divmod(size, count)
    start = index * quotient + min(index, remainder)
    return slice(start, start + quotient + (index < remainder))


class BatchShare:
    """The rows of every batch of `builder` that input pipeline `index` of `count` builds.

    What the worker processes of a `keras_trainx.data.shard.SequenceShard` receive. A share with no
    rows of a batch (a last batch smaller than `count`) is an empty batch of the right shapes, built
    from the batch's first sample.

    Args:
        builder: the sequence's `BatchBuilder`.
        index, count: this pipeline's index, and the number of pipelines.
    """

    def __init__(self, builder: BatchBuilder, index: int, count: int) -> None:
        self.builder, self.index, self.count = builder, index, count

    def build_batch(self, epoch: int, index: int, empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """This share's rows of batch `index` of epoch `epoch` (see `BatchBuilder.build_batch`)."""
        ids = self.builder.indices(index, epoch)
        rows = share_rows(len(ids), self.index, self.count)
        if rows.start < rows.stop:
            return self.builder.build_samples(epoch, ids[rows], empty)
        return tuple(_first_rows(part, 0) for part in self.builder.build_samples(epoch, ids[:1], empty))


def _first_rows(part: Any, rows: int) -> Any:
    """The first `rows` rows of every array of `part` (an array or a dict of arrays)."""
    if isinstance(part, dict):
        return {key: value[:rows] for key, value in part.items()}
    return part[:rows]
