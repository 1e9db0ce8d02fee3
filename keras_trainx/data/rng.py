"""Random streams that are pure functions of (seed, epoch, batch index).

Every batch gets its own NumPy `Generator` and Python `random.Random`, derived with
`np.random.SeedSequence(seed, spawn_key=(stream, epoch, index))`. A batch computed in a worker thread,
a worker process or the main process is therefore the same batch, epochs differ, and no two batches
share a stream. The shuffling order of an epoch comes from a separate stream of the same seed.
"""

import random

import numpy as np

from keras_trainx.validation import check_int

_AUGMENT_STREAM = 0
_SHUFFLE_STREAM = 1


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


def batch_random_state(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """The random generators for one batch: a pure function of (seed, epoch, index).

    Args:
        seed: non-negative int.
        epoch: the epoch counter (0 for the first epoch).
        index: the batch index within the epoch.

    Returns:
        `(numpy_generator, python_random)`: a `np.random.Generator` and a `random.Random`, meant to be
        shared by all transforms of one albumentations pipeline through `Compose.set_random_state`.

    Example:

    >>> g1, r1 = batch_random_state(7, 0, 3)
    >>> g2, r2 = batch_random_state(7, 0, 3)
    >>> bool(g1.random() == g2.random()) and r1.random() == r2.random()
    True
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(_AUGMENT_STREAM, epoch, index))
    numpy_generator = np.random.Generator(np.random.PCG64(sequence))
    python_random = random.Random(int.from_bytes(sequence.generate_state(4, np.uint32).tobytes(), "little"))
    return numpy_generator, python_random


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
