"""Saving and loading models as a directory of JSON and safetensors, without pickle.

A saved model is a directory::

    config.json         {"class": "package.module:QualName", "config": {...}, "format_version": 1}
    model.safetensors   the state dict (tied tensors stored once)
    *.json              optional extra files (e.g. a vocoder's mel_config.json)

``config`` holds the constructor's keyword arguments, so ``Class(**config)`` rebuilds the
architecture and the weights are then loaded strictly. Loading never unpickles anything: a model
directory downloaded from anywhere can only provide numbers and JSON, never code.

Writes are atomic at the directory level: everything goes into a temporary sibling directory that
is renamed into place once complete, so an interrupted save leaves the previous model untouched.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
_ALIASES_KEY = "diffcore.aliases"
_METADATA_KEY = "diffcore.metadata"

PathLike = str | os.PathLike
T = TypeVar("T", bound="PretrainedMixin")


def capture_config(local_vars: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments from ``locals()``, for ``self.config``.

    Call it before defining any other local variable in ``__init__``::

        def __init__(self, dim: int = 64, depth: int = 2):
            super().__init__()
            self.config = capture_config(locals())
    """
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


def class_path(klass: type) -> str:
    """``module:QualName``, the name a class is stored under in config.json."""
    return f"{klass.__module__}:{klass.__qualname__}"


def import_class(path: str) -> type:
    """The class named ``module:QualName`` (the inverse of :func:`class_path`), importing its module."""
    module, _, qual = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


class PretrainedMixin:
    """Adds ``save_pretrained`` / ``from_pretrained`` to an ``nn.Module`` subclass.

    The class must set ``self.config``: a JSON-serialisable dict of its constructor's keyword
    arguments (see ``capture_config``), such that ``type(self)(**self.config)`` rebuilds the same
    architecture. Tuples come back as lists after the JSON round trip.
    """

    config: dict[str, Any]

    def save_pretrained(self, directory: PathLike, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write config.json, model.safetensors and the ``extra`` JSON files ({filename: object}).

        An existing model directory is replaced as a whole, atomically; files in it that this
        save does not write are carried over. Returns the directory's path.
        """
        if not isinstance(self, nn.Module):
            raise TypeError(f"{type(self).__name__} uses PretrainedMixin but is not an nn.Module")
        config = getattr(self, "config", None)
        if not isinstance(config, dict):
            raise TypeError(f"{type(self).__name__} must set self.config (a dict of its constructor's "
                            "keyword arguments, e.g. self.config = capture_config(locals())) to be saved")
        _check_config_matches_signature(type(self), config)
        header = {"class": class_path(type(self)), "config": config, "format_version": FORMAT_VERSION}
        files = {CONFIG_FILE: _to_json(header, f"{type(self).__name__}.config")}
        for name, obj in (extra or {}).items():
            if name in (CONFIG_FILE, WEIGHTS_FILE) or Path(name).name != name or not name.endswith(".json"):
                raise ValueError(f"extra file name {name!r} must be a plain '*.json' file name other than "
                                 f"{CONFIG_FILE}")
            files[name] = _to_json(obj, f"extra[{name!r}]")
        tensors, aliases = _dedupe_shared(self.state_dict())

        def write(tmp: Path) -> None:
            for name, text in files.items():
                _write_text(tmp / name, text)
            metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases)}
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
            _fsync(tmp / WEIGHTS_FILE)

        target = Path(directory).expanduser()
        atomic_write_dir(target, write)
        return target

    @classmethod
    def from_pretrained(cls: type[T], directory: PathLike, map_location: str | torch.device = "cpu",
                        *, strict: bool = True) -> T:
        """Rebuild a model saved by ``save_pretrained`` and load its weights (strictly by default).

        The stored class must be ``cls`` or a subclass of it (calling a base class's from_pretrained
        returns the subclass that was saved, if its module has been imported). The model is
        returned in eval mode on ``map_location``.
        """
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"no model directory at {str(root)!r}")
        header = read_json(root, CONFIG_FILE)
        if not isinstance(header, dict) or not {"class", "config"} <= header.keys():
            raise ValueError(f"{root / CONFIG_FILE} is not a diffcore model config "
                             "(it needs 'class' and 'config')")
        version = header.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise ValueError(f"{root / CONFIG_FILE} has format_version {version}; this diffcore reads up to "
                             f"{FORMAT_VERSION}. Upgrade diffcore.")
        klass = _resolve_class(cls, header["class"], root)
        try:
            model = klass(**header["config"])
        except TypeError as e:
            raise TypeError(f"config in {root / CONFIG_FILE} does not fit {klass.__name__}'s "
                            f"constructor: {e}") from e
        weights = root / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{WEIGHTS_FILE} is missing from {str(root)!r}; it is written by "
                                    f"save_pretrained() next to {CONFIG_FILE}")
        try:
            state = load_file(str(weights), device="cpu")
        except SafetensorError as e:
            raise ValueError(f"{weights} is not a readable safetensors file ({e}); re-save the model") from e
        _load_state_dict(model, state, strict=strict, source=str(weights))
        return model.to(map_location).eval()


def read_json(directory: PathLike, name: str) -> Any:
    """Read one JSON file of a saved model (config.json or an ``extra`` file) with a clear error."""
    path = Path(directory).expanduser() / name
    if not path.is_file():
        writer = "save_pretrained()" if name == CONFIG_FILE else f"save_pretrained(extra={{{name!r}: ...}})"
        raise FileNotFoundError(f"{name} is missing from {str(path.parent)!r}; it is written by {writer}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_state(path: PathLike, tensors: Mapping[str, Tensor],
               metadata: Mapping[str, Any] | None = None) -> None:
    """Write a flat dict of tensors plus JSON metadata to one safetensors file, atomically.

    Tensors that share memory are saved as independent copies (safetensors refuses shared storage).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, int]] = set()
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        t = t.detach()
        key = (str(t.device), t.untyped_storage().data_ptr())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        out[name] = t.contiguous()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        meta = {"format": "pt", _METADATA_KEY: _to_json(dict(metadata or {}), "metadata")}
        save_file(out, str(tmp), metadata=meta)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: PathLike,
               map_location: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by ``save_state``: (tensors, metadata)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no state file at {str(path)!r} (written by save_state())")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get(_METADATA_KEY, "{}"))
    tensors = load_file(str(path), device="cpu")
    return {k: v.to(map_location) for k, v in tensors.items()}, meta


# --------------------------------------------------------------------------------------------------
# helpers


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from e


def _check_config_matches_signature(klass: type, config: dict[str, Any]) -> None:
    """Fail at save time, not at load time, when ``klass(**config)`` cannot work."""
    params = inspect.signature(klass).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in params if p.name in named and p.default is p.empty}
    unknown, missing = sorted(config.keys() - named), sorted(required - config.keys())
    if unknown or missing:
        raise ValueError(f"{klass.__name__}.config does not match its constructor: unknown keys {unknown}, "
                         f"missing required arguments {missing}")


def _dedupe_shared(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Store tied tensors (identical views of one storage) once; returns (tensors, {alias: kept}).

    Overlapping but different views are copied: loading writes consistent values into each.
    """
    groups: dict[tuple, str] = {}
    storages: set[tuple[str, int]] = set()
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name in sorted(state):
        t = state[name].detach()
        if t.numel() == 0:
            tensors[name] = t.cpu().contiguous()
            continue
        storage = (str(t.device), t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in groups:
            aliases[name] = groups[view]
            continue
        groups[view] = name
        shared = storage in storages
        storages.add(storage)
        tensors[name] = (t.clone() if shared else t).cpu().contiguous()
    return tensors, aliases


def _load_state_dict(model: nn.Module, state: dict[str, Tensor], *, strict: bool, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    # a key absent from the file is fine when it is tied to a key that is present
    by_view = {_view_key(v): k for k, v in own.items() if k in state}
    missing = [k for k in missing if _view_key(own[k]) not in by_view]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in state if k in own and state[k].shape != own[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        parts = [f"weights in {source} do not match {type(model).__name__}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"  {label} ({len(keys)}): {', '.join(keys[:5])}{more}")
        parts.append("Was config.json edited, or the class changed since saving?")
        raise ValueError("\n".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _view_key(t: Tensor) -> tuple:
    if t.numel() == 0:
        return (id(t),)
    return (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def _all_subclasses(klass: type) -> list[type]:
    out = []
    for sub in klass.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _resolve_class(cls: type, stored: str, root: Path) -> type:
    """The class named in config.json, which must be cls or one of its (imported) subclasses."""
    if class_path(cls) == stored:
        return cls
    matches = [c for c in _all_subclasses(cls) if class_path(c) == stored]
    if matches:
        return matches[-1]  # the most recent definition, should a module have been reloaded
    if stored.rpartition(":")[2] == cls.__qualname__:
        # same class name, other module: the class moved, or the model was saved from a script (__main__)
        warnings.warn(f"{root / CONFIG_FILE} names {stored}; loading it as {class_path(cls)}", stacklevel=3)
        return cls
    raise TypeError(f"{root / CONFIG_FILE} holds a {stored}, which is not {class_path(cls)} or a subclass "
                    f"of it; call from_pretrained on {stored.rpartition(':')[2]} (or import its module)")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # directories cannot be fsynced on some platforms
    finally:
        os.close(fd)


def atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh sibling directory, then swap it in for ``target``."""
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{str(target)!r} exists and is not a directory")
        if any(target.iterdir()) and not (target / CONFIG_FILE).is_file():
            # refuse rather than replace: the path may be a working directory, not an old model
            raise FileExistsError(f"{str(target)!r} is a non-empty directory without {CONFIG_FILE}; "
                                  "refusing to replace it with a model")
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".{target.name}.{tag}.tmp")
    old = target.with_name(f".{target.name}.{tag}.old")
    tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
    try:
        write(tmp)
        if target.exists():
            for entry in target.iterdir():
                if not (tmp / entry.name).exists():
                    copy = shutil.copytree if entry.is_dir() else shutil.copy2
                    copy(entry, tmp / entry.name)
        _fsync(tmp)
        if target.exists():
            # POSIX cannot rename a directory over a non-empty one: move the old one aside first.
            # Until the rmtree below, the previous model survives (as target, then as `old`).
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
