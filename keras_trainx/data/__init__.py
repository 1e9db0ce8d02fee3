"""Image data for Keras: `AugmentedSequence` (albumentations on `PyDataset`), `to_tf_dataset`, and
`EpochCallback`/`epoch_callbacks`, which tell a sequence the epoch `fit` runs."""

from keras_trainx.data.epochs import EpochCallback, epoch_callbacks
from keras_trainx.data.sequence import AugmentedSequence
from keras_trainx.data.tf_dataset import to_tf_dataset
