"""Loading saved models: `custom_objects()`, `load_model()`, and `keras-trainx inspect MODEL`."""

import contextlib
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import h5py
import keras

from keras_trainx import activations, layers, schedules  # noqa: F401  (registers our objects)

PACKAGE = "keras_trainx"

_KERAS_NAMESPACES = (
    keras.layers,
    keras.models,
    keras.optimizers,
    keras.optimizers.schedules,
    keras.losses,
    keras.metrics,
    keras.initializers,
    keras.regularizers,
    keras.constraints,
    keras.activations,
)


def legacy_mish(x: Any) -> Any:
    """What the name `"Mish"` meant in tf.keras 2 models, in both of its roles.

    The well-known tf.keras 2 recipe registers `get_custom_objects().update({"Mish": Mish(mish)})`
    where `Mish` subclasses `Activation`; saved `.h5` models then hold `{"class_name": "Mish",
    "config": {..., "activation": "mish"}}` as a layer's activation or as a layer of its own. Models
    that registered a function named `Mish` hold the bare name instead. Keras 3 returns a function
    found under a class name as is (the activation roles), and the legacy `.h5` loader builds layers
    with `from_config` (the layer role), so this is a function with a `from_config` attribute that
    builds a `keras_trainx.layers.Mish`. Its `__name__` is `"mish"`: a model loaded with it re-saves
    with Keras' built-in `"mish"`.

    Args:
        x: Input tensor.

    Returns:
        `keras.activations.mish(x)`.
    """
    return activations.mish(x)


def _legacy_mish_layer(config: dict[str, Any]) -> keras.layers.Layer:
    config = dict(config)
    activation = config.pop("activation", "mish")
    if not (activation in ("mish", "Mish") or activation in (activations.mish, legacy_mish)):
        raise ValueError(
            f"A legacy 'Mish' layer wraps activation={activation!r}, not mish; pass your own class in "
            "custom_objects={'Mish': ...} to load it."
        )
    return layers.Mish(**config)


legacy_mish.__name__ = "mish"
setattr(legacy_mish, "from_config", _legacy_mish_layer)


def custom_objects() -> dict[str, Any]:
    """Returns the objects a model saved with keras_trainx (or an old tf.keras 2 Mish model) needs.

    Keys are the registered names of everything keras_trainx registers (`"keras_trainx>WarmUp"`,
    `"keras_trainx>Mish"`, `"keras_trainx>hard_mish"`, ...) plus legacy aliases: `"Mish"` (the name
    the tf.keras 2 recipe `get_custom_objects().update({"Mish": ...})` stored; see `legacy_mish`) and
    `"mish"` (Keras' built-in mish, the `{"mish": mish}` recipe).

    Returns:
        A new dict on every call; adding to it changes nothing global.

    Example:

    >>> import keras, keras_trainx, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mish.keras")
    >>> keras.Sequential([keras.Input((3,)), keras_trainx.layers.Mish()]).save(path)
    >>> model = keras.models.load_model(path, custom_objects=keras_trainx.custom_objects())
    >>> type(model.layers[0]).__name__
    'Mish'
    """
    return _bundle()


def _bundle() -> dict[str, Any]:
    objects = {
        name: obj for name, obj in keras.saving.get_custom_objects().items() if name.startswith(PACKAGE + ">")
    }
    objects["Mish"] = legacy_mish
    objects["mish"] = activations.mish
    return objects


def load_model(filepath: str | os.PathLike, custom_objects: dict[str, Any] | None = None,
               **kwargs: Any) -> keras.Model:
    """`keras.models.load_model` with `keras_trainx.custom_objects()` merged in.

    Args:
        filepath: Path of a `.keras` file (or unzipped `.keras` directory) or a legacy `.h5` file.
        custom_objects: Optional dict of the caller's own objects; its keys win over ours and over
            objects registered with Keras under the same names (during the load, Keras' registry
            holds the caller's objects under those names).
        **kwargs: Passed on to `keras.models.load_model` (`compile`, `safe_mode`).

    Returns:
        The loaded Keras model.

    Raises:
        ValueError: For a TensorFlow SavedModel directory (Keras 3 cannot load one as a model; the
            message names `keras.layers.TFSMLayer`), for a file that is not a readable saved model
            (as `read_config` says, checked before Keras reads it; also a damaged zip archive), and
            when the model references objects that resolve nowhere (the message lists their names).
        OSError: When nothing is at `filepath` (FileNotFoundError) or the file cannot be read.

    Example:

    >>> import keras, keras_trainx, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mish.keras")
    >>> keras.Sequential([keras.Input((3,)), keras_trainx.layers.Mish()]).save(path)
    >>> type(keras_trainx.load_model(path).layers[0]).__name__
    'Mish'
    """
    path = _existing_path(filepath)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ValueError(
            f"{path!r} is a TensorFlow SavedModel directory, which Keras 3 cannot load as a model. "
            f"For inference use `keras.layers.TFSMLayer({path!r}, call_endpoint='serving_default')`; "
            "to get a trainable Keras model, load it in tf.keras 2 and save it with `model.save('model.keras')` "
            "(or '.h5')."
        )
    _check_custom_objects(custom_objects)
    read_config(path)
    merged = {**_bundle(), **(custom_objects or {})}
    try:
        with _users_keys_first(custom_objects or {}):
            return keras.models.load_model(path, custom_objects=merged, **kwargs)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise _unreadable(path, f"the zip archive is damaged ({error})") from error
    except (TypeError, ValueError) as error:
        unknown = [name for name, resolves in referenced_objects(path, custom_objects).items() if not resolves]
        if unknown:
            raise ValueError(
                f"Cannot load {path!r}: it references objects that neither Keras, keras_trainx nor your "
                f"custom_objects know: {', '.join(unknown)}. Pass them as `custom_objects={{name: object}}` "
                "or decorate them with `@keras.saving.register_keras_serializable()` and import their "
                "module before loading."
            ) from error
        if h5py.is_hdf5(path) and kwargs.get("compile", True) and _loads_uncompiled(path, merged, kwargs):
            raise ValueError(
                f"{path!r} holds a tf.keras 2 training config (optimizer, loss, metrics) that Keras 3 cannot "
                f"rebuild ({error}); the model itself loads. Pass compile=False and call model.compile(...) "
                "again."
            ) from error
        raise


@contextlib.contextmanager
def _users_keys_first(custom_objects: dict[str, Any]) -> Iterator[None]:
    """Lets the caller's `custom_objects` win over objects registered under the same names.

    Keras looks registered names up in its global registry before the `custom_objects` it is given
    (and before `custom_object_scope`), so a caller's `{"keras_trainx>Mish": MyMish}` would lose to
    our registered `Mish`. For the duration of the load, the registry (`keras.saving.get_custom_objects()`)
    holds the caller's objects under those names; the previous entries come back afterwards.
    """
    registry = keras.saving.get_custom_objects()
    shadowed = {name: registry[name] for name in custom_objects if name in registry}
    registry.update({name: custom_objects[name] for name in shadowed})
    try:
        yield
    finally:
        registry.update(shadowed)


def _existing_path(filepath: str | os.PathLike) -> str:
    """`filepath` as a string path to a regular file or a directory, checked before any read.

    Raises FileNotFoundError when nothing is there, and ValueError for a named pipe (reading one waits
    for a writer), a socket or a device.
    """
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"`filepath` must be a path (str or os.PathLike); received filepath={filepath!r} of type "
                        f"{type(filepath).__name__}.")
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: {path!r}.")
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise _unreadable(path, f"it is {kind}; {_FORMATS}")
    return path


_FORMATS = "pass a .keras file, an unzipped .keras directory or an .h5 file"


def _unreadable(path: str, what: str) -> ValueError:
    return ValueError(f"{path!r} is not a readable saved model: {what}.")


def _check_custom_objects(custom_objects: object) -> None:
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"`custom_objects` must be a dict of name -> object; received {custom_objects!r}.")


def _loads_uncompiled(path: str, custom_objects: dict[str, Any], kwargs: dict[str, Any]) -> bool:
    try:
        keras.models.load_model(path, custom_objects=custom_objects, **{**kwargs, "compile": False})
    except (TypeError, ValueError):
        return False
    return True


def read_config(filepath: str | os.PathLike) -> dict[str, Any]:
    """Returns the model config (a dict) stored in a `.keras` file/directory or a legacy `.h5` file.

    A `.keras` config includes its `"compile_config"` (optimizer with its schedule, losses, metrics);
    a tf.keras 2 `.h5` training config is left out (its optimizer names, e.g. "Custom>Adam", are
    tf.keras built-ins, not custom objects).

    Raises:
        FileNotFoundError: nothing is at `filepath`; another `OSError` when the file cannot be read.
        ValueError: `filepath` is not a saved model (a named pipe, a directory without config.json,
            neither a zip nor an HDF5 file) or its config cannot be read (a damaged zip archive, a
            truncated or damaged HDF5 file, no config.json, not UTF-8, not JSON, nested too deeply,
            not a JSON object); the message names the file and what is wrong.

    Example:

    >>> import keras, keras_trainx, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mish.keras")
    >>> keras.Sequential([keras.Input((3,)), keras_trainx.layers.Mish()]).save(path)
    >>> keras_trainx.saving.read_config(path)["class_name"]
    'Sequential'
    """
    path = _existing_path(filepath)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise _unreadable(path, f"it is a directory without config.json; {_FORMATS}")
        with open(os.path.join(path, "config.json"), "rb") as f:
            return _parse_config(path, f.read(), "config.json")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                raw = archive.read("config.json")
        except KeyError:
            raise _unreadable(path, "the zip archive holds no config.json") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise _unreadable(path, f"the zip archive is damaged ({error})") from None
        return _parse_config(path, raw, "config.json")
    if h5py.is_hdf5(path):
        with _opened_hdf5(path) as f:
            if "model_config" not in f.attrs:
                raise _unreadable(path, "the HDF5 file holds no model config (a weights-only file?)")
            raw = f.attrs["model_config"]
        return _parse_config(path, raw.encode("utf-8") if isinstance(raw, str) else bytes(raw),
                             "its model_config attribute")
    raise _unreadable(path, f"it is neither a .keras zip archive nor an HDF5 (.h5) file; {_FORMATS}")


@contextlib.contextmanager
def _opened_hdf5(path: str) -> Iterator[h5py.File]:
    """`path` opened with h5py; a file h5py cannot open (truncated, damaged) is a ValueError naming it.

    h5py's own error does not name the file; a file that cannot be read at all stays an `OSError`.
    """
    try:
        file = h5py.File(path, "r")
    except (PermissionError, FileNotFoundError):
        raise
    except OSError as error:
        raise _unreadable(path, f"the HDF5 file is truncated or damaged ({error})") from None
    with file:
        yield file


_JSON_KINDS = {int: "number", float: "number", str: "string", list: "array", bool: "true/false",
               type(None): "null"}


def _parse_config(path: str, raw: bytes, where: str) -> dict[str, Any]:
    """The JSON object `raw` holds; ValueError naming `path`, `where` and what is wrong otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _unreadable(path, f"{where} is not UTF-8 text ({error})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise _unreadable(path, f"{where} is not JSON ({error})") from None
    except RecursionError:
        raise _unreadable(path, f"{where} is nested too deeply to be a model config") from None
    if not isinstance(config, dict):
        raise _unreadable(path, f"{where} holds a JSON {_JSON_KINDS[type(config)]}, not a model config "
                                f"(a JSON object)")
    return config


def _references(config: Any, found: set[str]) -> None:
    """Collects the names of objects a config references but that are not Keras built-ins.

    Walks the config with a stack, not recursion: a config as deep as JSON allows is still read.
    """
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key in ("activation", "recurrent_activation"):
            if isinstance(node.get(key), str) and not _is_keras_activation(node[key]):
                found.add(node[key])
        if isinstance(node.get("class_name"), str):
            name = _object_name(node)
            if name is not None:
                found.add(name)
        pending.extend(node.values())


def _object_name(node: dict[str, Any]) -> str | None:
    """The name a serialized object is looked up by, or None for a Keras built-in."""
    class_name, module = node["class_name"], node.get("module")
    registered = node.get("registered_name") if isinstance(node.get("registered_name"), str) else None
    from_keras = module == "keras" or str(module).startswith("keras.")
    if class_name.startswith("__"):
        return None
    if class_name == "function":
        name = node.get("config")
        if not isinstance(name, str) or from_keras or _is_keras_activation(name):
            return None
        return name
    if from_keras and ">" not in str(registered):
        return None
    if not registered and _is_keras_class(class_name):
        return None
    return registered or class_name


def _is_keras_class(name: str) -> bool:
    return name in ("Functional", "Sequential", "Model") or any(
        isinstance(getattr(namespace, name, None), type) for namespace in _KERAS_NAMESPACES
    )


def _is_keras_activation(name: str) -> bool:
    try:
        keras.activations.get(name)
    except ValueError:
        return False
    return True


def referenced_objects(filepath: str | os.PathLike, custom_objects: dict[str, Any] | None = None) -> dict[str, bool]:
    """Lists the custom (non-Keras) objects a saved model references and whether each resolves.

    Args:
        filepath: A `.keras` file or directory, or a legacy `.h5` file.
        custom_objects: Optional dict of the caller's own objects, as for `load_model`.

    Returns:
        A dict `{name: resolves}` in name order; `resolves` is True when the name is in
        keras_trainx's `custom_objects()`, in `custom_objects`, or registered with Keras.

    Example:

    >>> import keras, keras_trainx, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mish.keras")
    >>> keras.Sequential([keras.Input((3,)), keras_trainx.layers.Mish()]).save(path)
    >>> keras_trainx.saving.referenced_objects(path)
    {'keras_trainx>Mish': True}
    """
    _check_custom_objects(custom_objects)
    found: set[str] = set()
    _references(read_config(filepath), found)
    known = {**_bundle(), **(custom_objects or {})}
    return {
        name: name in known or keras.saving.get_registered_object(name) is not None for name in sorted(found)
    }
