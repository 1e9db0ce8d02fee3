"""`BatchBuilder`: an `AugmentedSequence`'s batches as a pure function of (seed, epoch, index).

It holds what a batch is made of (the images, the targets, the albumentations pipeline, the seed, the
batch size and the shuffling) and nothing of Keras or TensorFlow, so that the worker processes of
`use_multiprocessing=True`, which receive it pickled, import only NumPy, OpenCV and albumentations
(and the modules of the user's own transforms).

Every image of a batch must leave the pipeline with the same shape and dtype as the batch's first
one. When one does not, the batch is built again up to that image with albumentations recording the
transforms it applies, and the error names the transforms applied to one of the two images only
(a transform with `p < 1` that changes the dtype, like `A.ToFloat(p=0.5)`, or the size, like
`A.RandomCrop(..., p=0.5)`).
"""

import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from keras_trainx.data.rng import batch_random_state, epoch_permutation
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
    >>> len(builder), builder.build(0, 2, np.empty)[0].shape
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

    def _thread_pipeline(self) -> Any:
        """This thread's copy of the pipeline (the random state is set per batch)."""
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = copy.deepcopy(self.pipeline)
        return pipeline

    def _outputs(self, pipeline: Any, epoch: int, index: int) -> Iterator[tuple[int, Any]]:
        """The pipeline's outputs for the samples of batch `(epoch, index)`, in order, one at a time."""
        pipeline.set_random_state(*batch_random_state(self.seed, epoch, index))
        for i in self.indices(index, epoch):
            image = self.images[i]
            yield i, pipeline(image=image, **self.targets.inputs(i, image, self.images.describe))

    def build(self, epoch: int, index: int, empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """Batch `index` of epoch `epoch`, its images written into the array `empty(shape, dtype)` returns.

        Args:
            epoch: non-negative int.
            index: batch index in `[0, len(self))`.
            empty: called once per batch with the images' `(shape, dtype)`; returns an array of that
                shape and dtype (its contents are overwritten), e.g. `np.empty`.

        Returns:
            `(images,)`, `(images, target)` or `(images, target, sample_weight)`.
        """
        ids = self.indices(index, epoch)
        collected = BatchTargets(self.targets, len(ids))
        images = None
        for j, (i, output) in enumerate(self._outputs(self._thread_pipeline(), epoch, index)):
            result = output["image"]
            if images is None:
                images = empty((len(ids),) + result.shape, result.dtype)
            elif result.shape != images.shape[1:] or result.dtype != images.dtype:
                raise ValueError(
                    f"{self.images.describe(i)} comes out of the pipeline as {result.dtype} {result.shape}, "
                    f"the batch's first image as {images.dtype} {images.shape[1:]}: "
                    f"{self.changed_by((epoch, index, 0), (epoch, index, j))}"
                )
            images[j] = result
            collected.add(j, output)
        target = collected.result(ids)
        if target is None:
            return (images,)
        if self.targets.sample_weight is not None:
            return images, target, self.targets.sample_weight[ids]
        return images, target

    def applied_transforms(self, epoch: int, index: int, position: int) -> list[str]:
        """The names of the transforms the pipeline applied to sample `position` of batch `(epoch, index)`.

        Builds the batch again up to that sample with albumentations recording what it applies
        (`save_applied_params`), so it costs up to a batch: meant for error messages.
        """
        pipeline = copy.deepcopy(self.pipeline)
        pipeline.save_applied_params = True
        for j, (_, output) in enumerate(self._outputs(pipeline, epoch, index)):
            if j == position:
                return [name for name, _ in output["applied_transforms"]]
        raise IndexError(f"batch {index} of epoch {epoch} has no sample {position}.")

    def changed_by(self, first: tuple[int, int, int], second: tuple[int, int, int]) -> str:
        """A sentence naming the transforms applied to one of two samples only, and the fix.

        Args:
            first, second: `(epoch, batch index, position in the batch)` of the two samples.
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
