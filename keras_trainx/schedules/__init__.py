"""Keras-serializable learning-rate schedules, pure functions of the optimizer step.

Each schedule subclasses `keras.optimizers.schedules.LearningRateSchedule`, is registered under the
package `keras_trainx` and works inside `model.fit` with and without `jit_compile`.
"""

from keras_trainx.schedules.accumulation import AccumulationSchedule
from keras_trainx.schedules.cosine_restarts import CosineAnnealingWarmupRestarts
from keras_trainx.schedules.epochs import epochs_to_steps, updates_per_epoch
from keras_trainx.schedules.multi_step import MultiStepDecay
from keras_trainx.schedules.one_cycle import OneCycle
from keras_trainx.schedules.plotting import drawn_steps, plot, values
from keras_trainx.schedules.warmup import WarmUp

__all__ = ["CosineAnnealingWarmupRestarts", "MultiStepDecay", "OneCycle", "WarmUp", "plot", "values"]
__all__ += ["AccumulationSchedule", "drawn_steps", "epochs_to_steps", "updates_per_epoch"]
