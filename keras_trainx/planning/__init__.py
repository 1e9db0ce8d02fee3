"""Tools that tell which effective batch, learning rate and micro-batch suit a model, measured."""

from keras_trainx.accumulation.noise_scale import GradientNoiseScale

__all__ = ["GradientNoiseScale"]
