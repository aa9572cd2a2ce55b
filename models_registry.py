"""Build models from checkpoint metadata through an allow-list: a checkpoint never chooses code.

A checkpoint's ``meta`` names a factory (``model``), the module holding it (``model_module``) and
the factory's keyword arguments (``model_kwargs``). Those are data from a file, so they are used
only to *select* among this project's own factories:

* ``model_module`` must be one of :data:`MODEL_MODULES` (checked before anything is imported, so a
  crafted ``model_module="this"`` imports nothing);
* ``model`` must be a key of that module's ``MODELS`` dict;
* ``model_kwargs`` must be plain values (``None``, bool, int, float, str, and lists/tuples of
  them), must not name a download or file (``pretrained``, ``pretrained_cfg``, ``checkpoint_path``,
  ``file``, ... and no string that looks like a URL or a path), and must be parameters the factory
  accepts (its signature, plus the model class its ``**kwargs`` reach) whose default is a plain
  value (so a file cannot set ``norm_layer`` or ``patch_embed``).

Anything else raises :class:`ModelSpecError` (a ``ValueError``: one ``error:`` line, exit 2 in the
entry points) naming the file when the caller passes ``source``.

Usage::

    from models_registry import build_from_meta, get_module

    model = build_from_meta(meta, source=path, img_size=64)   # overrides win over the file
    state = get_module(meta["model_module"]).checkpoint_filter_fn(ckpt, model)

This is a models-level module: it imports no data or training code, and imports the model modules
lazily (only allow-listed names).
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = [
    "FORBIDDEN_KWARGS",
    "MODEL_MODULES",
    "ModelSpecError",
    "build_from_meta",
    "build_model",
    "check_kwargs",
    "factory_parameters",
    "find_module",
    "get_module",
    "model_names",
]

#: this project's model modules -> the model class their factories' ``**kwargs`` are passed on to
#: (for the signature check). Search order of :func:`find_module`.
MODEL_MODULES: dict[str, str] = {
    "models_vit_tensor": "VisionTransformer",
    "models_mae_spectral": "MaskedAutoencoderViT",
    "downstream_tasks.models_dense": "SpectralViT",
}

#: keyword names that would make a factory (or timm) fetch or read something: never from a file
FORBIDDEN_KWARGS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "checkpoint_path",
        "checkpoint",
        "file",
        "url",
        "hf_hub_id",
        "hf_hub_filename",
        "cache_dir",
        "weights",
    }
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,128}$")
#: strings that look like a location rather than an option value (URL, path, weight file)
_LOCATION_RE = re.compile(r"://|[/\\]|^~|\.(?:pth?|bin|safetensors|ckpt|npz|pkl|py|so|json)$", re.I)
_SCALARS = (bool, int, float, str, type(None))


class ModelSpecError(ValueError):
    """A checkpoint's model metadata names something outside this project's model registry, or
    options its factory does not accept (one line; nothing was imported or built)."""


def _where(source: Any) -> str:
    return f"{source}: " if source else ""


def _check_module(module: Any, source: Any = None) -> str:
    if not isinstance(module, str) or module not in MODEL_MODULES:
        raise ModelSpecError(
            f"{_where(source)}model_module {module!r} is not one of this project's model modules "
            f"({', '.join(MODEL_MODULES)}); a checkpoint cannot choose other code. Pass --model "
            "with a factory name (python -m util.training.checkpoint_meta info shows the metadata)"
        )
    return module


def get_module(module: str, source: Any = None) -> ModuleType:
    """Import an allow-listed model module (refused before any import otherwise)."""
    return importlib.import_module(_check_module(module, source))


def model_names(module: str) -> list[str]:
    """Factory names of an allow-listed module (its ``MODELS`` dict), sorted."""
    return sorted(get_module(module).MODELS)


def find_module(name: str, source: Any = None) -> str:
    """The allow-listed module whose ``MODELS`` holds ``name``.

    ``mae_vit_*`` names exist in both the classifier and the pretraining module (the classifier of
    the same geometry): they resolve to ``models_mae_spectral``.

    Raises:
        ModelSpecError: no module holds the name (the message lists where to look).
    """
    _check_name(name, source)
    order = list(MODEL_MODULES)
    if name.startswith("mae_"):
        order.remove("models_mae_spectral")
        order.insert(0, "models_mae_spectral")
    for module in order:
        if name in get_module(module).MODELS:
            return module
    raise ModelSpecError(
        f"{_where(source)}unknown model {name!r}: not a factory of {', '.join(MODEL_MODULES)} "
        "(python -m util.training.checkpoint_meta info CKPT shows a checkpoint's model)"
    )


def _check_name(name: Any, source: Any = None) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelSpecError(f"{_where(source)}model name {name!r} is not a factory name")
    return name


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list | tuple) and depth < 2 and len(value) <= 64:
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def check_kwargs(kwargs: Any, source: Any = None) -> dict[str, Any]:
    """Static checks of factory keyword arguments from a file (no import): a dict of plain
    values, no download/file keys, no URL- or path-like strings. Returns a copy.

    Raises:
        ModelSpecError: naming the first offending key.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise ModelSpecError(
            f"{_where(source)}model_kwargs must be a dict, got {type(kwargs).__name__}"
        )
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelSpecError(f"{_where(source)}model_kwargs key {key!r} is not a name")
        if key in FORBIDDEN_KWARGS:
            raise ModelSpecError(
                f"{_where(source)}model_kwargs sets {key!r}: a checkpoint cannot make the model "
                "download or read files (weights come from the checkpoint itself)"
            )
        if not _is_plain(value):
            raise ModelSpecError(
                f"{_where(source)}model_kwargs {key}={_short(value)} is not a plain value (None, "
                "bool, int, finite float, str, or a short list of them)"
            )
        bad = [s for s in _strings(value) if _LOCATION_RE.search(s)]
        if bad:
            raise ModelSpecError(
                f"{_where(source)}model_kwargs {key}={_short(bad[0])} looks like a URL or a file "
                "path; a checkpoint cannot make the model fetch or read anything"
            )
        out[key] = list(value) if isinstance(value, list) else value
    return out


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _settable(params: Mapping[str, inspect.Parameter]) -> dict[str, inspect.Parameter]:
    """Keyword parameters whose default is a plain value (not a class or callable)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        n: p
        for n, p in params.items()
        if p.kind in kinds
        and n != "self"
        and (p.default is inspect.Parameter.empty or _is_plain(p.default))
    }


def factory_parameters(module: str, name: str) -> dict[str, inspect.Parameter]:
    """Keyword arguments a file may set for factory ``name`` of ``module``: the factory's own
    parameters and, when it forwards ``**kwargs``, those of the module's model class
    (:data:`MODEL_MODULES`), less parameters whose default is a class or callable."""
    mod = get_module(module)
    _check_name(name)
    if name not in mod.MODELS:
        raise ModelSpecError(f"unknown model {name!r} in {module}")
    factory: Callable[..., Any] = mod.MODELS[name]
    params = dict(inspect.signature(factory).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        target = getattr(mod, MODEL_MODULES[module])
        params = {**dict(inspect.signature(target.__init__).parameters), **params}
    return _settable(params)


def build_model(
    module: str, name: str, kwargs: Mapping[str, Any] | None = None, source: Any = None
) -> Any:
    """Build factory ``name`` of the allow-listed ``module`` with validated ``kwargs``.

    Order: the module name is checked against :data:`MODEL_MODULES` and ``kwargs`` statically
    (:func:`check_kwargs`) before anything is imported; then the allow-listed module is imported,
    ``name`` looked up in its ``MODELS`` and every key matched to :func:`factory_parameters`.

    Args:
        module: ``models_vit_tensor``, ``models_mae_spectral`` or ``downstream_tasks.models_dense``.
        name: a key of that module's ``MODELS``.
        kwargs: factory keyword arguments (e.g. a checkpoint's ``model_kwargs``).
        source: what the values came from (a checkpoint path), named in errors.

    Returns:
        The freshly initialised model.

    Raises:
        ModelSpecError: anything outside the registry, one line.
    """
    _check_module(module, source)
    _check_name(name, source)
    kwargs = check_kwargs(kwargs, source)
    mod = get_module(module, source)
    if name not in mod.MODELS:
        raise ModelSpecError(
            f"{_where(source)}unknown model {name!r} in {module}; choose one of: "
            f"{', '.join(sorted(mod.MODELS))}"
        )
    allowed = factory_parameters(module, name)
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ModelSpecError(
            f"{_where(source)}{name} takes no option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} (settable: {', '.join(sorted(allowed))})"
        )
    return mod.create_model(name, **kwargs)


def build_from_meta(meta: Mapping[str, Any], source: Any = None, **overrides: Any) -> Any:
    """Build the model a checkpoint's ``meta`` describes (``model``, ``model_module``,
    ``model_kwargs``); ``overrides`` (e.g. ``img_size`` from a flag) replace file values and are
    validated the same way. A missing ``model_module`` is looked up by name (:func:`find_module`).
    """
    name = meta.get("model")
    if not name:
        raise ModelSpecError(
            f"{_where(source)}the checkpoint does not record its model; pass --model"
        )
    module = meta.get("model_module")
    if module is None:
        _check_name(name, source)
        module = find_module(name, source)
    _check_module(module, source)
    kwargs = {**check_kwargs(meta.get("model_kwargs"), source), **overrides}
    return build_model(module, name, kwargs, source)
