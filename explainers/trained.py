"""What learned explainers (RExL policies, FastSHAP networks) share: the fingerprint that ties trained weights to the
model they were trained for, and their checkpoint files' atomic save and checked load.

A learned explainer must refuse a model it was not trained for, so its file records :func:`weights_fingerprint` of
the audited model at training time and the explainer compares it with the model it is given. The fingerprint names
the weights, not the file they came from: SHA-256 over every tensor's name, dtype, shape and bytes in name order
(:func:`tensors_sha256`), so a re-saved file with the same weights has the same fingerprint. Pure PyTorch.
"""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # module -> (tensors' version, digest)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex, 64 digits) of a ``state_dict``-like mapping: each tensor's name, dtype, shape and bytes, in name
    order (device and memory layout do not matter)."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def torch_module(scorer) -> nn.Module | None:
    """The torch module holding the audited model's weights: ``scorer.model`` when it is one, or its ``.model``
    (an adapter wrapping the network); None when neither is."""
    model = getattr(scorer, "model", None)
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    return None


def weights_fingerprint(scorer) -> str:
    """:func:`tensors_sha256` of the audited model's ``state_dict`` (:func:`torch_module` of ``scorer``). A scorer
    may give its own in ``weights_sha256`` (a model that is no torch module: ONNX, a callable). Raises ValueError for
    a scorer whose model has no torch weights and no ``weights_sha256`` (nothing to tie trained weights to)."""
    given = getattr(scorer, "weights_sha256", None)
    if given:
        return str(given)
    module = torch_module(scorer)
    if module is None:
        raise ValueError(f"cannot fingerprint the weights of scorer {type(scorer).__name__}: its model is no torch "
                         "module; give the scorer a weights_sha256 attribute")
    state = module.state_dict()
    # hashing a detector's weights costs ~20 ms, paid by every explainer built per pedestrian: reuse the digest while
    # every tensor is the same storage at the same autograd version (an in-place change -- an optimiser step,
    # load_state_dict, copy_ -- bumps it; a randomised copy is another module)
    version = tuple((k, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for k, t in state.items())
    cached = _FINGERPRINTS.get(module)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = tensors_sha256(state)
    _FINGERPRINTS[module] = (version, digest)
    return digest


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (a temporary name in the same folder, then a rename: a
    reader never sees half a file); creates the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, file_format: str, version: int, required: Sequence[str], what: str,
                    how_to_train: str) -> dict:
    """The dict saved by :func:`save_checkpoint` at ``path``, read with ``weights_only=True`` (no code runs) and
    checked: its ``format`` / ``version`` keys equal ``file_format`` / ``version`` and it has every ``required`` key.

    Raises FileNotFoundError for a missing file (saying ``how_to_train``); ValueError naming the file (prefixed
    ``what:``) for one that is unreadable, not a dict, of another format or version, or missing keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path} ({how_to_train})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{what}: {path} is not a readable file ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != file_format or raw.get("version") != version:
        got = (raw.get("format"), raw.get("version")) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{what}: {path} is not a {file_format} version {version} file (got {got})")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ValueError(f"{what}: {path} misses {missing}")
    return raw
