"""Safe checkpoint loading: the project's checkpoints, torchvision's VGG16 state dict, safetensors.

Nothing in a checkpoint is executed: .pt/.pth files go through torch.load(weights_only=True),
whose unpickler only rebuilds tensors and plain containers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .vgg import VGG16_CFG

HEAD_PREFIX = "classifier.6."
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class LoadReport:
    path: Path
    layout: str  # "project" or "torchvision"
    loaded: int
    fresh: tuple[str, ...] = field(default=())  # parameters left at their initialization
    metadata: dict = field(default_factory=dict)

    def summary(self) -> str:
        fresh = f"; {len(self.fresh)} tensors left at init" if self.fresh else ""
        return f"loaded {self.loaded} tensors from {self.path} ({self.layout} layout){fresh}"


def save_checkpoint(model: nn.Module, path: str | Path, variant: str, num_classes: int,
                    width: float = 1.0) -> Path:
    """Write a checkpoint this toolchain loads: safetensors (by suffix) or a torch.save dict."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"variant": variant, "num_classes": num_classes, "width": width}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, tmp, metadata={k: str(v) for k, v in meta.items()})
        else:
            torch.save({**meta, "state_dict": state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) from a file, without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file; "
                              f"pass the path of a .pt, .pth or .safetensors file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable; check its permissions")
    kind = checkpoint_format(path)
    if kind == "safetensors":
        obj, metadata = _read_safetensors(path)
    elif kind in ("zip", "pickle"):
        obj, metadata = _read_torch(path), {}
    else:
        raise CheckpointError(f"checkpoint {path} is {kind}; pass a file written by torch.save "
                              f"(.pt/.pth) or by safetensors (.safetensors)")
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                metadata = {k: v for k, v in obj.items() if isinstance(v, (str, int, float))}
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (a mapping of names to "
                              f"tensors, bare or under 'state_dict')")
    state = _without_wrapper_prefix(obj)
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(
            f"checkpoint {path} holds NaN or infinite values in {len(nonfinite)} tensors "
            f"({', '.join(nonfinite[:4])}{' ...' if len(nonfinite) > 4 else ''}): the training run "
            f"diverged or the file was damaged; export an earlier checkpoint")
    return state, metadata


# what training wrappers put before a model's own names: DataParallel/DDP ("module."),
# a LightningModule's attribute ("model."), torch.compile ("_orig_mod.")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def _without_wrapper_prefix(state: dict) -> dict:
    """The state dict under the model's own names: a wrapper's prefix is removed where every
    key carries it (repeatedly: a compiled model inside DDP)."""
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k.removeprefix(prefix): v for k, v in state.items()}


def checkpoint_format(path: Path) -> str:
    """What the file holds, from its first bytes (not its name): "zip" (torch.save),
    "pickle" (torch.save's legacy format), "safetensors", or a description of what it is not."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    looks = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
    return (f"not a PyTorch checkpoint (neither a zip archive nor a pickle) and not a "
            f"safetensors file: it starts with {head!r}, which looks like {looks}")


def _read_torch(path: Path) -> object:
    try:
        with open(path, "rb") as f:  # a file object: torch.load reads a path by its suffix
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} was refused: it contains pickled objects other than tensors "
            f"({str(e).splitlines()[-1].strip()[:200]}). Nothing in it was executed. Re-save "
            f"it as a state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file "
                              f"({str(e)[:160]})") from None


def torchvision_conv_indices() -> list[int]:
    """Indices of the 13 convs in torchvision's vgg16().features (conv, ReLU pairs, pools)."""
    indices, position = [], 0
    for v in VGG16_CFG:
        if v != "M":
            indices.append(position)
        position += 1 if v == "M" else 2
    return indices


def _is_torchvision_layout(state: dict[str, torch.Tensor]) -> bool:
    allowed = {f"features.{i}.{p}" for i in torchvision_conv_indices() for p in ("weight", "bias")}
    feature_keys = {k for k in state if k.startswith("features.")}
    return bool(feature_keys) and feature_keys <= allowed


def _map_torchvision(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    model_convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    index_map = dict(zip(torchvision_conv_indices(), model_convs, strict=True))
    mapped = {}
    for key, value in state.items():
        if key.startswith("features."):
            _, index, param = key.split(".")
            key = f"features.{index_map[int(index)]}.{param}"
        mapped[key] = value
    return mapped


def describe_state(state: dict[str, torch.Tensor]) -> str:
    """Which variant, width and class count a state dict seems to be made for."""
    if any(".fc.0.weight" in k for k in state):
        variant = "'se'"
    elif any(".linear_query." in k for k in state):
        variant = "'la' or 'sa' (they share parameters)"
    elif any(k.startswith("features.") for k in state):
        variant = "'vgg16'"
    else:
        return "no VGG16 variant of this project"
    first = state.get("features.0.weight")
    head = state.get(HEAD_PREFIX + "weight")
    width = f", width {first.shape[0] / 64:g}" if first is not None else ""
    classes = f", {head.shape[0]} classes" if head is not None else ""
    return f"variant {variant}{width}{classes}"


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True,
                 reset_head: bool = False) -> LoadReport:
    """Load ``path`` into ``model`` in place.

    torchvision's VGG16 layout is mapped into every variant (attention blocks shift the indices);
    the blocks it lacks keep their initialization. ``reset_head`` keeps the model's own last
    classifier layer (a different num_classes). ``strict`` refuses any other mismatch.
    """
    path = Path(path)
    state, metadata = read_checkpoint(path)
    own_variant = getattr(model, "variant", None)
    if strict and own_variant and metadata.get("variant") not in (None, own_variant):
        raise CheckpointError(f"checkpoint {path} was made for variant "
                              f"{metadata['variant']!r}, not {own_variant!r}; build that variant")
    layout = "project"
    if _is_torchvision_layout(state):
        layout = "torchvision"
        state = _map_torchvision(state, model)
    if reset_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    own = model.state_dict()
    state = {k: _fit_pointwise(v, own[k]) if k in own else v for k, v in state.items()}
    _check_match(path, state, own, layout, reset_head, strict)
    fresh = tuple(k for k in own if k not in state)
    model.load_state_dict(state, strict=False)
    return LoadReport(path, layout, len(state), fresh, metadata)


def _fit_pointwise(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A published nn.Linear weight (out, in) into this project's 1x1 conv (out, in, 1, 1)."""
    if value.dim() == 2 and target.dim() == 4 and target.shape == (*value.shape, 1, 1):
        return value.reshape(target.shape)
    return value


def _check_match(path: Path, state: dict, own: dict, layout: str, reset_head: bool,
                 strict: bool) -> None:
    head = HEAD_PREFIX + "weight"
    if head in state and state[head].shape[0] != own[head].shape[0]:
        raise CheckpointError(
            f"checkpoint {path} has {state[head].shape[0]} classes, the model "
            f"{own[head].shape[0]}; set num_classes to match, or reset the head "
            f"(--reset-head / reset_head=True) to fine-tune a new one")
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                         for k in state if k in own and state[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in state and not _may_stay_fresh(k, layout, reset_head))
    if wrong_shape or (strict and (missing or unexpected)):
        problems = [f"{name} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                    for name, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("wrong shape", wrong_shape)) if keys]
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: {'; '.join(problems)}. The checkpoint "
            f"seems to be for {describe_state(state)}; the model is {describe_state(own)}: build "
            f"the checkpoint's variant, width (WIDTH_MULT / --width-mult) and classes (NUM_CLASSES)")


def _may_stay_fresh(key: str, layout: str, reset_head: bool) -> bool:
    if reset_head and key.startswith(HEAD_PREFIX):
        return True
    # torchvision's layout has no SE/attention blocks (features.<i>.<sub>...<param>).
    return layout == "torchvision" and key.startswith("features.") and key.count(".") > 2
