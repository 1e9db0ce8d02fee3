"""Random streams that are pure functions of (seed, epoch, sample index).

Every sample of every epoch draws from its own NumPy `Generator` and Python `random.Random`: the
epoch's PCG64 stream, derived with `np.random.SeedSequence(seed, spawn_key=(0, epoch))`, advanced by
`sample * 2**64` draws (so no two samples share draws), and a `random.Random` seeded with that
generator's first draw. A sample augmented in a worker thread, a worker process, the main process or
on another machine of a multi-worker run is therefore the same sample, whatever batch or shard it
lands in, and epochs differ. The shuffling order of an epoch comes from a separate stream of the
same seed.
"""

import random
from typing import Any

import numpy as np

from keras_trainx.validation import check_int

_AUGMENT_STREAM = 0
_SHUFFLE_STREAM = 1
_SAMPLE_STRIDE = 2**64  # draws between the starts of two samples' streams


def draw_seed() -> int:
    """Draws a fresh 128-bit seed from the operating system's entropy.

    Returns:
        A non-negative Python int, usable as the `seed` of `AugmentedSequence`.

    Example:

    >>> seed = draw_seed()
    >>> seed >= 0
    True
    """
    entropy = np.random.SeedSequence().entropy
    assert isinstance(entropy, int)  # drawn from the OS when no entropy is given
    return entropy


def check_seed(seed: int | None) -> int:
    """Validates a seed: a non-negative int (or None, which means "draw one").

    Args:
        seed: the value passed as `seed=`.

    Returns:
        The seed as a Python int, freshly drawn when `seed` is None.
    """
    if seed is None:
        return draw_seed()
    return check_int("seed", seed, minimum=0, hint="None draws a seed.")


class SampleStreams:
    """A NumPy `Generator` and a `random.Random` that `move_to(epoch, sample)` sets to that sample's
    streams, in place (cheaper than new objects: one thread's pipeline keeps one `SampleStreams`).

    Args:
        seed: non-negative int.

    Example:

    >>> streams = SampleStreams(7)
    >>> streams.move_to(0, 3)
    >>> first = streams.generator.random(), streams.python_random.random()
    >>> streams.move_to(0, 3)
    >>> first == (streams.generator.random(), streams.python_random.random())
    True
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._bit_generator = np.random.PCG64()
        self.generator = np.random.Generator(self._bit_generator)
        self.python_random = random.Random()
        self._epoch = -1
        self._epoch_state: Any = None

    def move_to(self, epoch: int, sample: int) -> None:
        """Sets both generators to the start of sample `sample`'s streams in epoch `epoch`.

        Args:
            epoch: the epoch counter (0 for the first epoch).
            sample: the sample's index in the data (not its position in the epoch or batch).
        """
        if epoch != self._epoch:
            sequence = np.random.SeedSequence(self.seed, spawn_key=(_AUGMENT_STREAM, epoch))
            self._epoch_state = np.random.PCG64(sequence).state
            self._epoch = epoch
        self._bit_generator.state = self._epoch_state
        self._bit_generator.advance(sample * _SAMPLE_STRIDE)
        self.python_random.seed(int(self.generator.integers(2**63)))


def sample_random_state(seed: int, epoch: int, sample: int) -> tuple[np.random.Generator, random.Random]:
    """The random generators for one sample of one epoch: a pure function of (seed, epoch, sample).

    Args:
        seed: non-negative int.
        epoch: the epoch counter (0 for the first epoch).
        sample: the sample's index in the data.

    Returns:
        `(numpy_generator, python_random)`: a `np.random.Generator` and a `random.Random`, meant to be
        shared by all transforms of one albumentations pipeline through `Compose.set_random_state`.

    Example:

    >>> g1, r1 = sample_random_state(7, 0, 3)
    >>> g2, r2 = sample_random_state(7, 0, 3)
    >>> bool(g1.random() == g2.random()) and r1.random() == r2.random()
    True
    """
    streams = SampleStreams(seed)
    streams.move_to(epoch, sample)
    return streams.generator, streams.python_random


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch: a pure function of (seed, epoch).

    Args:
        seed: non-negative int.
        epoch: the epoch counter.
        n: number of samples.

    Returns:
        An int64 array holding a permutation of `range(n)`.

    Example:

    >>> sorted(epoch_permutation(7, 0, 5).tolist())
    [0, 1, 2, 3, 4]
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(_SHUFFLE_STREAM, epoch))
    return np.random.Generator(np.random.PCG64(sequence)).permutation(n)
