"""The user's own model: a factory imported from their code, a state_dict from a local file, the
head found and replaced, and the units transfer learning trains or reads ("stages").

- `make_model(spec, args)` imports `package.module:factory` (the current folder first on the path,
  as `python -m` does) or `path/to/file.py:factory` and calls it with `args`. This runs the user's
  code: every failure (no such module or factory, an exception in the module or the factory, a
  result that is not an `nn.Module`) is an InputError naming the spec and the reason.
- `load_weights(model, path)` reads a state_dict with `torch.load(weights_only=True)` (a file cannot
  run code) and loads it strictly: a file that does not fit is an InputError listing the missing,
  unexpected and mis-shaped keys.
- `find_head` is the last `nn.Linear` (or the one named); `replace_head` puts a new Linear with the
  same input width (and bias or not) in its place.
- `units(model, head)`: what `last-k` trains and `stages` reads, from the module's own tree: its
  children, a child holding the head opened up, and a single container holding the whole backbone
  opened up too (a ResNet gives conv1, bn1, ..., layer1 .. layer4, avgpool; a MobileNetV2 gives
  features.0 .. features.18).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.errors import InputError, first_line
from optkit.io.modelspec import ModelSpec, format_args, parse_model_spec

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "state", "net", "weights")
_SHOWN = 6  # keys named per kind in an error


def import_factory(spec: ModelSpec | str, what: str | None = None) -> Callable[..., Any]:
    """The factory `spec` names, imported (see the module docstring)."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec, "the model factory")
    label = what or f"--model {spec.text}"
    if spec.file is not None:
        module = _import_file(spec.file, label)
    else:
        assert spec.module is not None
        module = _import_module(spec.module, label)
    target: Any = module
    for part in spec.factory.split("."):
        if not hasattr(target, part):
            found = sorted(
                name for name, value in vars(module).items()
                if callable(value) and not name.startswith("_")
            )[:12]  # fmt: skip
            listed = f" (it has {', '.join(found)})" if found else ""
            where = str(spec.file) if spec.file is not None else spec.module
            raise InputError(f"{label}: {where} has no {spec.factory!r}{listed}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{label}: {spec.factory} is a {type(target).__name__}, not callable")
    return target


def _import_module(name: str, label: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:  # as `python -m` and `python script.py` find the user's modules
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise InputError(
                f"{label}: no module named {exc.name!r} (looked in {cwd} and on the Python path)"
            ) from None
        raise InputError(f"{label}: importing {name} failed: {_reason(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise InputError(f"{label}: importing {name} failed: {_reason(exc)}") from None


def _import_file(path: Path, label: str) -> Any:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"optkit_user_{path.stem if path.stem.isidentifier() else 'module'}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{label}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:  # its own sibling modules import, as when it runs as a script
        sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise InputError(f"{label}: importing {path} failed: {_reason(exc)}") from None
    return module


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def make_model(
    spec: ModelSpec | str, args: dict[str, Any] | None = None, what: str | None = None
) -> nn.Module:
    """`factory(**args)` of `spec`, checked to be an `nn.Module` (InputError otherwise)."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec, "the model factory")
    args = dict(args or {})
    label = what or f"--model {spec.text}"
    factory = import_factory(spec, label)
    try:
        model = factory(**args)
    except (Exception, SystemExit) as exc:
        raise InputError(
            f"{label}: {spec.factory}({format_args(args)}) raised {_reason(exc)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{label}: {spec.factory}({format_args(args)}) returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


# --- weights -------------------------------------------------------------------------------------


def read_state_dict(
    path: Path, what: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state_dict in `path` and notes on what was done to find it (a state_dict nested under
    'state_dict' / 'model' / ..., a DataParallel 'module.' prefix); InputError for anything else."""
    label = what or f"--weights {path}"
    if not Path(path).is_file():
        raise InputError(f"{label}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a file it cannot read
        text = str(exc)
        if any(w in text for w in ("Unsupported global", "Unsupported class", "allowed global")):
            raise InputError(
                f"{label}: holds Python objects, not only tensors (a whole pickled model?); "
                "save model.state_dict() instead (it is read with weights_only=True)"
            ) from None
        raise InputError(f"{label}: not a readable torch file ({type(exc).__name__})") from None
    notes: list[str] = []
    if isinstance(payload, dict) and not _all_tensors(payload):
        for key in STATE_DICT_KEYS:
            inner = payload.get(key)
            if isinstance(inner, dict) and inner and _all_tensors(inner):
                notes.append(f"the state_dict under {key!r}")
                payload = inner
                break
    if not isinstance(payload, dict):
        raise InputError(
            f"{label}: not a state_dict (it holds a {type(payload).__name__}); save "
            "model.state_dict()"
        )
    if not payload:
        raise InputError(f"{label}: an empty state_dict (no weights)")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(
                f"{label}: not a state_dict: {key!r} holds a {type(value).__name__}, not a tensor"
            )
        if value.is_meta or value.layout != torch.strided:
            kind = (
                "meta (no data)"
                if value.is_meta
                else f"{value.layout} (sparse)".replace("torch.", "")
            )
            raise InputError(
                f"{label}: weight {key!r} is a {kind} tensor; save a state_dict of dense "
                "tensors (model.state_dict() of a model on the CPU or a GPU)"
            )
    return payload, notes


def _all_tensors(mapping: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def load_weights(model: nn.Module, path: Path, what: str | None = None) -> list[str]:
    """Load the state_dict in `path` into `model`, strictly. InputError, one line, naming the
    missing, unexpected and mis-shaped keys when it does not fit. Returns notes (see
    `read_state_dict`)."""
    label = what or f"--weights {path}"
    state, notes = read_state_dict(path, label)
    wanted = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(
        k.startswith("module.") for k in wanted
    ):
        state = {k[len("module.") :]: v for k, v in state.items()}
        notes.append("its 'module.' prefix (DataParallel) removed")
    # BatchNorm fills in a missing num_batches_tracked itself (state_dicts from before it existed)
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in wanted]
    shapes = [
        f"{k} (file {_shape(state[k])}, model {_shape(wanted[k])})"
        for k in wanted
        if k in state and state[k].shape != wanted[k].shape
    ]
    problems = [
        _listed(missing, "missing key"),
        _listed(unexpected, "unexpected key"),
        _listed(shapes, "key of another shape", "keys of another shape"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(f"{label}: does not fit the model: {'; '.join(problems)}")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{label}: weight {key!r} holds NaN or inf")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"{label}: does not fit the model ({first_line(exc)})") from None
    return notes


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "scalar"


def _listed(items: list[str], one: str, many: str | None = None) -> str:
    if not items:
        return ""
    kind = one if len(items) == 1 else (many or one + "s")
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{len(items)} {kind}: {shown}{more}"


# --- the model's head, inputs and units ----------------------------------------------------------


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def find_head(model: nn.Module, name: str | None = None) -> tuple[nn.Linear, str]:
    """The classifier: the module called `name`, which must be an `nn.Linear`, or else the model's
    last Linear layer. InputError when there is none."""
    if name is None:
        found = linear_names(model)
        if not found:
            raise InputError(
                "the model has no Linear layer to serve as its head (name one with --head)"
            )
        name = found[-1]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        linears = ", ".join(linear_names(model)[-6:]) or "none"
        raise InputError(
            f"--head {name}: the model has no module {name!r} (its Linear layers: {linears})"
        ) from None
    if not isinstance(module, nn.Linear):
        raise InputError(f"--head {name}: a {type(module).__name__}, not a Linear layer")
    return module, name


def replace_head(model: nn.Module, name: str, classes: int) -> nn.Linear:
    """Put a new `nn.Linear` for `classes` outputs where the head `name` was (same input width, a
    bias if it had one, torch's default initialization); returns it."""
    old = model.get_submodule(name)
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features, classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)
    return new


def input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes (None when it starts with something else)."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return int(module.in_channels)
        if isinstance(module, nn.Linear):
            return None
    return None


_NOT_STAGES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
               nn.Flatten)  # fmt: skip


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def units(model: nn.Module, head: str | None = None) -> list[tuple[str, nn.Module]]:
    """The model's own stages before its head, in definition order (see the module docstring)."""
    if head is None:
        head = find_head(model)[1]
    found = _open(model, "", head)
    while True:
        with_parameters = [(n, m) for n, m in found if _has_parameters(m)]
        if len(with_parameters) != 1 or not list(with_parameters[0][1].children()):
            break
        name, module = with_parameters[0]
        at = found.index((name, module))
        found[at : at + 1] = _open(module, name + ".", head)
    return found


def _open(module: nn.Module, prefix: str, head: str) -> list[tuple[str, nn.Module]]:
    result: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = prefix + name
        if full == head:
            continue
        if head.startswith(full + "."):  # holds the head: its other children are units
            result += _open(child, full + ".", head)
        else:
            result.append((full, child))
    return result


def trainable_units(model: nn.Module, head: str | None = None) -> list[tuple[str, nn.Module]]:
    """`units` that have parameters: what `last-k` counts."""
    return [(n, m) for n, m in units(model, head) if _has_parameters(m)]


def stage_units(model: nn.Module, head: str | None = None) -> list[str]:
    """`units` whose output a linear classifier can read (Dropout, Identity, Flatten left out)."""
    return [n for n, m in units(model, head) if not isinstance(m, _NOT_STAGES)]
