"""Fast model loading shared by the loaders: no throw-away random init, one dtype cast, casts on the device.

Building a large model the ordinary way fills every parameter with random values that the
checkpoint then overwrites, and library loaders add per-key bookkeeping (transformers compiles
one regular expression per checkpoint key). Here parameters are created on the ``meta`` device
(no memory, no init) while buffers are built for real (non-persistent ones such as RoPE
frequencies are computed by the constructor and are not in checkpoints), the checkpoint's
tensors are placed on the target device and cast there once, and they become the parameters
with ``load_state_dict(strict=True, assign=True)``. The loaded values are the same bits as with
the ordinary path (tests compare them); loading stays strict about keys and shapes.
"""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Inside, parameters registered on any module go to the meta device (buffers stay real)."""
    original = torch.nn.Module.register_parameter

    def register(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            kind = type(param)
            self._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """torch's default float dtype set to ``dtype`` inside (as transformers' from_pretrained builds models)."""
    if dtype is None:
        yield
        return
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def place(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` on ``device``, floating tensors cast to ``dtype``: moved first (fewer bytes), cast there."""
    if tensor.device != device:
        tensor = tensor.to(device)
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor


def read_safetensors(path: str | Path, rename: Callable[[str], str | None], device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None, wanted: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose renamed key is kept (``rename`` returns None to skip one).

    Tensors are read (memory-mapped) to the CPU, moved to ``device`` and cast to ``dtype`` there.
    ``wanted``: keep only these renamed keys.
    """
    from safetensors import safe_open

    keep = set(wanted) if wanted is not None else None
    raw: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():
            name = rename(key)
            if name is not None and (keep is None or name in keep):
                raw[name] = f.get_tensor(key)
    return place_all(raw, device, dtype)


_LOAD_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("body4d_load_threads", default=0)
DEFAULT_LOAD_THREADS = 8


@contextlib.contextmanager
def load_threads_set(threads: int) -> Iterator[None]:
    """Loads inside this block place tensors with ``threads`` threads (0: the default); the run profile's
    ``load_threads`` (RunProfile.loading)."""
    token = _LOAD_THREADS.set(int(threads))
    try:
        yield
    finally:
        _LOAD_THREADS.reset(token)


def load_threads(device: torch.device) -> int:
    """Threads placing tensors: 8 (casts into fresh memory and uploads wait mostly on page faults and
    copies, which overlap even on 2 cores: 1.0-1.7x faster than one thread on the 2-core CPU,
    BENCHMARKS.md), or the run profile's ``load_threads`` (``load_threads_set``)."""
    return _LOAD_THREADS.get() or DEFAULT_LOAD_THREADS


def place_all(state: Mapping[str, torch.Tensor], device: torch.device | str,
              dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``place`` for every tensor; uploads to a GPU on a few threads (see ``load_threads``)."""
    dev = torch.device(device)
    workers = load_threads(dev)
    if workers == 1 or len(state) < 2:
        return {k: place(v, dev, dtype) for k, v in state.items()}
    with ThreadPoolExecutor(workers) as pool:  # torch releases the GIL while copying
        return dict(zip(state, pool.map(lambda v: place(v, dev, dtype), state.values())))


def move_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Move every buffer (not the parameters, which may still be on meta) to ``device``, in place."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)


def file_matches(path: str | Path, rename: Callable[[str], str | None], own: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the safetensors file holds exactly ``own``'s keys (after ``rename``; others ignored) and shapes."""
    from safetensors import safe_open

    seen = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():
            name = rename(key)
            if name is not None and name in own:
                seen[name] = tuple(f.get_slice(key).get_shape())
    return seen == dict(own)


def state_keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of ``model`` (parameters on meta included) with its shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def assign_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Make ``state``'s tensors the model's parameters/buffers (strict: every key, every shape)."""
    model.load_state_dict(dict(state), strict=True, assign=True)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    left += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:  # parameters shared under a name the state dict does not hold (cannot happen after strict)
        raise RuntimeError(f"{len(left)} tensors were not loaded (e.g. {', '.join(left[:3])})")


def mark_config(config: object, dtype: torch.dtype, directory: Path) -> None:
    """Record dtype and source in a transformers config and its direct sub-configs, as from_pretrained does."""
    config._name_or_path = str(directory)  # type: ignore[attr-defined]
    config.dtype = dtype  # type: ignore[attr-defined]
    for name in getattr(config, "sub_configs", {}):
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            sub.dtype = dtype


def load_transformers(cls: type, directory: str | Path, dtype: torch.dtype, device: torch.device | str,
                      rename: Callable[[str], str | None] | None = None,
                      model_types: Iterable[str] | None = None) -> torch.nn.Module | None:
    """A transformers model from a one-file folder (config.json + model.safetensors) the fast way, or None.

    None (the caller then uses from_pretrained, whose errors are clear) when the folder is not
    that layout, config.json's model_type is not in ``model_types`` (default: the class's own),
    or the file's keys (after ``rename``) or shapes differ from the model's. Values equal
    from_pretrained's (buffers built in ``dtype``, checkpoint tensors cast to ``dtype``).
    """
    import json

    directory = Path(directory)
    weights = directory / "model.safetensors"
    if not (directory / "config.json").is_file() or not weights.is_file():
        return None
    try:
        kinds = set(model_types or (cls.config_class.model_type,))  # type: ignore[attr-defined]
        if json.loads((directory / "config.json").read_text()).get("model_type") not in kinds:
            return None
        config = cls.config_class.from_pretrained(str(directory), local_files_only=True)  # type: ignore[attr-defined]
        mark_config(config, dtype, directory)
        with default_dtype(dtype), params_on_meta():
            model = cls(config)
        own = state_keys(model)
        if not file_matches(weights, rename or (lambda k: k), own):
            return None  # e.g. renamed keys transformers' conversion mapping handles
        state = read_safetensors(weights, rename or (lambda k: k), device, dtype, wanted=own)
        move_buffers(model, torch.device(device))
        assign_state(model, state)
    except Exception:  # noqa: BLE001 - anything unexpected: the ordinary loader reports it
        return None
    return model.eval()


def one_line(err: BaseException, limit: int = 240) -> str:
    """A library exception's first sentence as one clause: one line, no trailing full stop, no advice.

    torch's unpickling errors carry advice to retry with ``weights_only=False`` (never to be followed
    here), its zip reader a paragraph about corruption; only the first sentence is kept.
    """
    text = " ".join(str(err).split()) or type(err).__name__
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        return "it pickles objects other than tensors"
    for i in range(len(text) - 1):
        if text[i] == "." and text[i + 1] == " " and i > 0 and not text[i - 1].isdigit():
            text = text[:i]
            break
    text = text.rstrip(". ")
    return text if len(text) <= limit else text[:limit] + "..."


def check_weights_file(path: Path, fix: str) -> set[str]:
    """The keys of a weights file; refused, in one sentence naming it and ``fix``, if truncated, foreign or pickling code.

    safetensors: the header must cover the file (read without loading the tensors); .bin/.pt: a
    weights-only, memory-mapped load (nothing pickled but tensors is accepted).
    """
    import pickle

    from .errors import WeightsMismatchError

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                keys = set(f.keys())
        except Exception as err:  # noqa: BLE001 - SafetensorError and OS errors alike
            raise WeightsMismatchError(f"{path} is truncated or not a safetensors file ({one_line(err)}); {fix}.") from err
    else:
        try:
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(err):
                    raise
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise WeightsMismatchError(f"{path} pickles objects other than tensors, which are never loaded "
                                       f"(only safetensors and plain tensor files are); {fix}.") from err
        except Exception as err:  # noqa: BLE001 - truncated zip, foreign format
            raise WeightsMismatchError(f"{path} is truncated or not a weights file ({one_line(err)}); {fix}.") from err
        if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
            raise WeightsMismatchError(f"{path} holds no plain tensor state dict; {fix}.")
        keys = set(obj)
        del obj
    return keys


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def check_weights_folder(folder: Path, fix: str, required: Iterable[str] = ()) -> None:
    """Refuse in one sentence a model folder with no, truncated, code-pickling or foreign weight files.

    ``required``: keys the files must hold together (so another model's file is never loaded
    with its weights silently missing).
    """
    from .errors import MissingWeightsError, WeightsMismatchError

    files = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()) if folder.is_dir() else []
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    files = safetensors or files  # the libraries prefer safetensors when both exist
    if not files:
        raise MissingWeightsError(f"{folder} holds no weights file (.safetensors or .bin); {fix}.")
    keys: set[str] = set()
    for path in files:
        keys |= check_weights_file(path, fix)
    missing = [k for k in required if k not in keys]
    if missing:
        raise WeightsMismatchError(f"the weights in {folder} lack {', '.join(missing[:3])}, so they are not "
                                   f"the expected model's; {fix}.")
