from keras_trainx.cli import entry_point

entry_point()
