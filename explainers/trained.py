"""What learned explainers (RExL policies, FastSHAP networks) share: the fingerprint that ties trained weights to the
model they were trained for, and their checkpoint files' atomic save and checked load.

A learned explainer must refuse a model it was not trained for, so its file records :func:`weights_fingerprint` of
the audited model at training time and the explainer compares it with the model it is given. The fingerprint names
the weights, not the file they came from: SHA-256 over every tensor's name, dtype, shape and bytes in name order
(:func:`tensors_sha256`), so a re-saved file with the same weights has the same fingerprint. Also the checkpoint
mixin of the learned explainers' weights files (:class:`NetworkCheckpoint`) and the ``explain`` of an explainer that
counts its own network's forwards (:class:`CountsExplainerForwards`), and the class head every learned explainer shares
(:class:`LearnedExplainer`: its file read once, the guard's perturbation and model-weights checks). Pure PyTorch.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from explainers.base import Explanation
from explainers.perturb import Perturbation, make_perturbation

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
    # load_state_dict, copy_ -- bumps it; a randomised copy is another module). Not seen: writes through a tensor's
    # ``.data`` (PyTorch does not count them), so code that edits weights that way must not expect a new fingerprint.
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


class NetworkCheckpoint:
    """Mixin of a learned explainer's weights-file dataclass (FastSHAP's networks, RExL's policies): saved as
    ``torch.save`` of :meth:`to_dict` (its init fields; tuples as lists), read back checked with ``weights_only``.
    The subclass declares
    ``FORMAT``, ``VERSION``, ``REQUIRED`` (keys a file must have), ``WHAT`` (its name in errors), ``HOW_TO_TRAIN``,
    ``TUPLES`` (fields read back as tuples), has a ``state_dict`` field and a ``network(device)`` method, and a
    ``_networks: dict`` field (``init=False``) for :meth:`shared_network`.

    :meth:`digest` and :meth:`shared_network` are cached (an explainer built per pedestrian asks for both) and the
    caches follow the weights: they hold while ``state_dict`` holds the same tensor objects under the same names
    (same storage, shape, dtype) at the same autograd version, so replacing ``state_dict`` by other tensors, putting
    another tensor in it, removing one or changing one in place (``copy_``, ``add_``, an indexed assignment under
    ``no_grad``) is seen. Not seen: writes through a tensor's ``.data`` (PyTorch does not count them), as for
    :func:`weights_fingerprint`. The caches are not pickled (a copy hashes again)."""

    FORMAT: str
    VERSION: int
    REQUIRED: tuple[str, ...]
    WHAT: str
    HOW_TO_TRAIN: str
    TUPLES: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"format": self.FORMAT, "version": self.VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.init:
                continue
            if f.name == "state_dict":
                value = {k: v.detach().cpu() for k, v in value.items()}
            out[f.name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        return out

    def _weights_key(self) -> tuple:
        """What the caches of :meth:`digest` and :meth:`shared_network` are valid for (class docstring): per tensor
        of ``state_dict``, in its order: name, object id, storage pointer, autograd version, shape and dtype. Reads
        no tensor's values (microseconds)."""
        return tuple((k, id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype) for k, t in self.state_dict.items())

    def _cached(self, slot: str, key: tuple):
        """The value cached in ``slot`` for weights ``key``, or None. An entry keeps weak references to the tensors
        it was made for and is valid only while they all live (an id is unique only among live objects)."""
        entry = self.__dict__.get("_weights_cache", {}).get(slot)
        if entry is None or entry[0] != key or any(ref() is None for ref in entry[1]):
            return None
        return entry[2]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_weights_cache"}      # weak references: no pickle

    def _cache(self, slot: str, key: tuple, value):
        refs = tuple(weakref.ref(t) for t in self.state_dict.values())
        self.__dict__.setdefault("_weights_cache", {})[slot] = (key, refs, value)
        return value

    def digest(self) -> str:
        """First 12 hex digits of :func:`tensors_sha256` of the weights; hashed once per state of the weights (the
        class docstring says what counts as a change)."""
        key = self._weights_key()
        cached = self._cached("digest", key)
        return cached if cached is not None else self._cache("digest", key, tensors_sha256(self.state_dict)[:12])

    def save(self, path: str | Path) -> Path:
        """Write atomically (:func:`save_checkpoint`)."""
        return save_checkpoint(self.to_dict(), path)

    def shared_network(self, device: torch.device | str = "cpu") -> nn.Module:
        """``network(device)``, built once per device, checkpoint object and state of its weights (explainers built
        per target share it; inference only, never trained; changed weights give a new network, class
        docstring)."""
        key = self._weights_key()
        if self._cached("networks", key) is None:
            self._networks.clear()
            self._cache("networks", key, True)
        device_key = str(torch.device(device))
        if device_key not in self._networks:
            self._networks[device_key] = self.network(device)
        return self._networks[device_key]

    @classmethod
    def load(cls, path: str | Path):
        """Read a weights file. Raises FileNotFoundError for a missing file, ValueError naming the file for one that
        is unreadable, of another format or version, missing a key (:func:`load_checkpoint`), whose settings the
        subclass refuses (a ValueError of its constructor) or whose weights do not fit the network its fields
        describe."""
        raw = load_checkpoint(path, cls.FORMAT, cls.VERSION, cls.REQUIRED, cls.WHAT, cls.HOW_TO_TRAIN)
        try:                                   # a subclass's own checks of its settings (__post_init__)
            ckpt = cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.init and f.name in raw})
        except ValueError as exc:
            raise ValueError(f"{cls.WHAT}: {path}: {exc}") from None
        try:                                   # list fields as tuples; the weights fit the network its fields give
            for name in cls.TUPLES:
                setattr(ckpt, name, tuple(getattr(ckpt, name)))
            ckpt.network()
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"{cls.WHAT}: {path}: the weights do not fit its network "
                             f"({str(exc).splitlines()[0]})") from None
        return ckpt


class CountsExplainerForwards:
    """Mixin of a learned explainer whose own network runs beside the model (FastSHAP's), listed before
    :class:`~explainers.base.Explainer` in its bases: :meth:`explain` counts the network's forwards. The explainer
    adds 1 to ``n_explainer_forward`` per forward of its network and names its ``EXPLANATION`` class: an
    :class:`~explainers.base.Explanation` dataclass subclass with an ``n_explainer_forward: int`` field."""

    EXPLANATION: type[Explanation]
    n_explainer_forward: int = 0

    def explain(self, image, regions=None, *, budget=None, seed=0):
        """:meth:`Explainer.explain <explainers.base.Explainer.explain>` (same arguments, shapes and errors) as an
        ``EXPLANATION`` with the explainer network's forwards of this call in ``n_explainer_forward`` and in
        ``options["n_explainer_forward"]`` (``n_forward`` counts the model's only)."""
        self.n_explainer_forward = 0
        exp = super().explain(image, regions, budget=budget, seed=seed)
        exp.options["n_explainer_forward"] = self.n_explainer_forward
        return self.EXPLANATION(**{f: getattr(exp, f) for f in Explanation.__dataclass_fields__},
                                n_explainer_forward=self.n_explainer_forward)


def load_once(cls, path: str | Path):
    """``cls.load(path)``, once per file version in a process (a learned explainer is built per target): keyed by
    the class, the resolved path, its size, modification and change times and inode, so a rewritten file is read
    again. The checkpoint is shared: callers do not mutate it."""
    path = Path(path)
    if not path.is_file():
        return cls.load(path)                                  # its FileNotFoundError
    stat = path.stat()
    return _load_version(cls, str(path.resolve()), (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns))


@functools.lru_cache(maxsize=16)
def _load_version(cls, path: str, version: tuple):
    return cls.load(path)


def perturbation_of(description: str, who: str) -> Perturbation:
    """The perturbation a trained file names by its ``describe()``: the registered one with its defaults that
    describes itself so. Raises ValueError (naming ``who``, the method) for any other (pass it as
    ``perturbation=``)."""
    for name in ("mean", "blur", "constant", "noise"):
        p = make_perturbation(name)
        if p.describe() == description:
            return p
    raise ValueError(f"{who}: the weights' perturbation {description!r} is no registered perturbation with its "
                     "defaults; pass it as perturbation=")


class LearnedExplainer:
    """Mixin of every learned explainer (FastSHAP's networks, RExL's policies), listed before
    :class:`~explainers.base.Explainer` in its bases: what their class heads share. The class names its trained
    file's class (``CHECKPOINT``: a :class:`NetworkCheckpoint` with ``model_sha256`` and ``perturbation``), what
    errors call the file's content (``trained_what``: "network", "policy") and the option naming the file
    (``trained_file_option``).

    :meth:`load_trained` reads the file without a model (params validation); :meth:`trained_file` gives the
    checkpoint of a path (read once per file version, :func:`load_once`) or of a loaded checkpoint;
    :meth:`refuse_other_perturbation` and :meth:`refuse_other_model` are the guard's two checks every learned
    explainer makes: a substrate other than the one it learned on, and model weights other than those it was trained
    for (:func:`weights_fingerprint`), each a ValueError naming the method, the file and both sides."""

    name: str
    needs_trained_weights = True
    CHECKPOINT: type
    trained_what = "network"

    @classmethod
    def load_trained(cls, path: str | Path):
        """The trained file (``CHECKPOINT.load``: FileNotFoundError, ValueError naming the file)."""
        return cls.CHECKPOINT.load(path)

    @classmethod
    def trained_file(cls, given) -> tuple[object, str | None, str]:
        """(the checkpoint, its path or None, how errors name it) of ``given``: a path (read once per file
        version; FileNotFoundError, ValueError naming it) or a loaded ``CHECKPOINT``."""
        if isinstance(given, cls.CHECKPOINT):
            return given, None, f"the {cls.trained_what}"
        return load_once(cls.CHECKPOINT, given), str(given), str(given)

    @classmethod
    def refuse_other_perturbation(cls, trained: str, given: str | Perturbation | None, where: str) -> None:
        """ValueError when a ``given`` perturbation (None: the trained one) is not the one the file ``where`` was
        trained on (``trained``: its ``describe()``)."""
        if given is not None and make_perturbation(given).describe() != trained:
            raise ValueError(f"{cls.name}: {where} was trained on perturbation {trained!r}, got "
                             f"{make_perturbation(given).describe()!r}")

    @classmethod
    def refuse_other_model(cls, scorer, trained_sha256: str, where: str) -> None:
        """ValueError when the scorer's model weights (:func:`weights_fingerprint`; its errors) are not those the
        file ``where`` was trained for (``trained_sha256``)."""
        audited = weights_fingerprint(scorer)
        if audited != trained_sha256:
            raise ValueError(f"{cls.name}: {where} was trained for model weights {trained_sha256[:12]}, but the "
                             f"audited model's weights are {audited[:12]}: train a {cls.trained_what} for this model")
