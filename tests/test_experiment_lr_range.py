"""digits_lr_range_test: the warm-up sweep's CNN and optimizer, at the effective batch asked for.

(Its docstring example runs a real short sweep; here the call it makes is checked.)"""

import keras

from keras_trainx.experiments import DIGITS_SWEEP, build_cnn, lr_range


def test_it_runs_the_lr_range_test_of_the_warmup_sweeps_model_at_that_batch(monkeypatch):
    calls = []
    monkeypatch.setattr(lr_range, "lr_range_test", lambda model, x, y, **kwargs: calls.append((model, x, y, kwargs)))
    lr_range.digits_lr_range_test(384, seed=3, max_learning_rate=20.0)
    (model, x, y, kwargs), = calls
    assert kwargs == {**DIGITS_SWEEP, "max_learning_rate": 20.0, "batch_size": 64, "accum_steps": 6}
    assert x.shape == (1437, 8, 8, 1) and y.shape == (1437,)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert (optimizer.momentum, optimizer.weight_decay) == (0.9, 5e-4)
    assert model.loss.get_config()["from_logits"] is True
    assert [type(layer) for layer in model.layers] == [type(layer) for layer in build_cnn().layers]
    keras.utils.set_random_seed(3)
    assert all((a.numpy() == b.numpy()).all() for a, b in zip(model.weights, build_cnn().weights))
