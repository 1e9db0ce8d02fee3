"""A transform that breaks the worker process running it, for tests/test_data_processes.py.

Worker processes import this module to unpickle the transform, so it imports no Keras or TensorFlow.
"""

import ctypes
import os

import albumentations as A
import numpy as np


class BreakWorker(A.ImageOnlyTransform):
    """Passes images through, but on one whose first pixel is 255 it breaks its process: `how` is
    "segfault" (reads address 0) or "exit0" (`os._exit(0)`)."""

    def __init__(self, how: str, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.how = how

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        if img[0, 0, 0] == 255:
            if self.how == "segfault":
                ctypes.string_at(0)
            os._exit(0)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("how",)
