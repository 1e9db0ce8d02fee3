"""Image data for Keras: `AugmentedSequence` (albumentations on `PyDataset`) and `to_tf_dataset`."""

from keras_trainx.data.sequence import AugmentedSequence
from keras_trainx.data.tf_dataset import to_tf_dataset
