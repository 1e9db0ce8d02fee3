"""Planning large-batch training on the user's own model: which batch, rate and micro-batch suit it.

- `GradientNoiseScale`: the gradient noise scale `B_simple`, estimated from the accumulation windows
  while `fit_accumulated` trains.
- `lr_range_test`: the loss against an exponentially growing learning rate, one update per
  accumulation window (the effective batch), with suggested rates and a plot.
- `find_micro_batch_size`: the largest micro-batch that trains in memory and the `accum_steps` that
  make a given effective batch exactly, with the peak memory measured.

The last two train for real and restore the model, its optimizer and its metrics bit for bit
afterwards.
"""

from keras_trainx.accumulation.noise_scale import GradientNoiseScale
from keras_trainx.planning.lr_range_test import LRRangeTestResult, lr_range_test
from keras_trainx.planning.lr_rules import RULES
from keras_trainx.planning.micro_batch import MicroBatchPlan, MicroBatchProbe, find_micro_batch_size

__all__ = ["GradientNoiseScale", "LRRangeTestResult", "MicroBatchPlan", "MicroBatchProbe", "RULES",
           "find_micro_batch_size", "lr_range_test"]
