"""Loading SAM-3 (transformers format, ``facebook/sam3``): the tracker, the text detector, their processors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import Body4DError, MissingWeightsError, WeightsMismatchError
from ..runtime import pick_device, pick_dtype
from ..weights import resolve_model_dir

log = logging.getLogger(__name__)

SAM3_MEAN = (0.5, 0.5, 0.5)  # facebook/sam3 normalises with mean = std = 0.5
SAM3_STD = (0.5, 0.5, 0.5)


class Sam3Bundle(torch.nn.Module):
    """The tracker (points/boxes -> masklets), its processor, and optionally the text detector.

    An ``nn.Module`` so ComfyUI's model management can move and free it as one model. When
    both are loaded the detector shares the tracker's ViT backbone (one copy in memory).
    """

    def __init__(self, tracker: Any, processor: Any, detector: Any | None = None,
                 detector_processor: Any | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tracker = tracker  # transformers Sam3TrackerVideoModel
        self.detector = detector  # transformers Sam3Model (text prompt "person"), optional
        self.processor = processor  # transformers Sam3TrackerVideoProcessor
        self.detector_processor = detector_processor  # transformers Sam3Processor
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return next(self.tracker.parameters()).device

    @property
    def image_size(self) -> int:
        return int(self.tracker.config.image_size)


def _transformers():
    """Import transformers lazily with one clear error if it is missing or too old."""
    try:
        import transformers

        transformers.Sam3TrackerVideoModel  # noqa: B018 - raises on transformers < 5
    except (ImportError, AttributeError) as err:
        raise Body4DError("SAM-3 needs transformers >= 5 with torchvision: pip install 'transformers>=5'") from err
    return transformers


def build_processor(image_size: int, mean: tuple = SAM3_MEAN, std: tuple = SAM3_STD) -> Any:
    """A Sam3TrackerVideoProcessor for ``image_size`` (used when the folder has no processor files)."""
    tf = _transformers()
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = {"height": image_size, "width": image_size}
    mask = {"height": image_size * 2 // 7, "width": image_size * 2 // 7}  # 288 at 1008
    image_proc = tf.Sam3ImageProcessor(size=size, mask_size=mask, image_mean=list(mean), image_std=list(std))
    video_proc = Sam2VideoVideoProcessor(size=size, image_mean=list(mean), image_std=list(std))
    return tf.Sam3TrackerVideoProcessor(image_processor=image_proc, video_processor=video_proc)


# files Sam3TrackerVideoProcessor.from_pretrained reads (without one of them it fails and the defaults are used)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def _load_processor(model_dir: Path, image_size: int) -> Any:
    """The folder's Sam3TrackerVideoProcessor, or the documented defaults when it has no usable processor files."""
    if not any((model_dir / name).is_file() for name in PROCESSOR_FILES):
        log.warning("no processor files in %s; using SAM-3 defaults (%d px, mean=std=0.5)", model_dir, image_size)
        return build_processor(image_size)
    tf = _transformers()
    try:
        return tf.Sam3TrackerVideoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - fall back to the documented defaults
        log.warning("no usable processor files in %s (%s); using SAM-3 defaults (%d px, mean=std=0.5)",
                    model_dir, err, image_size)
        return build_processor(image_size)


def load_sam3(
    model_dir: str | Path | None = None,
    search_dirs: Iterable[str | Path] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    with_detector: bool = True,
    move: bool = True,
    fast: bool = True,
) -> Sam3Bundle:
    """Load the official transformers-format ``facebook/sam3`` folder (safetensors only).

    ``device`` is where SAM-3 will run; ``dtype`` auto picks bf16 on GPUs that support it
    and fp32 on the CPU (reduced precision on the CPU is refused: slow and inaccurate).
    Weights load on the CPU and move to ``device`` unless ``move`` is False (ComfyUI's model
    management moves them). Raises MissingWeightsError naming the missing files, the folder
    and the download command. ``fast`` (default) builds without random init and places the
    weights on ``device`` straight from the file; False is the previous transformers path
    (same values, slower; kept for A/B benches).
    """
    tf = _transformers()
    directory = resolve_model_dir("sam3", search_dirs=search_dirs, explicit=model_dir)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if dev.type == "cpu" and dt != torch.float32:
        log.warning("SAM-3 runs in fp32 on the CPU (%s requested)", dt)
        dt = torch.float32
    target = dev if move else torch.device("cpu")

    def load(cls: Any) -> Any:
        return _load_fast(cls, directory, dt, target) if fast else _from_pretrained(cls, directory, dt)

    tracker = load(tf.Sam3TrackerVideoModel)
    detector = load(tf.Sam3Model) if with_detector else None
    det_proc = None
    if detector is not None:
        share_backbone(tracker, detector)
        det_proc = _load_detector_processor(directory)
    processor = _load_processor(directory, int(tracker.config.image_size))
    bundle = Sam3Bundle(tracker.eval(), processor, detector.eval() if detector is not None else None, det_proc, dt)
    return bundle.to(dev) if move else bundle


def _from_pretrained(cls: Any, directory: Path, dtype: torch.dtype) -> Any:
    """from_pretrained (safetensors, local only) that refuses checkpoints leaving weights uninitialised.

    The previous path (``load_sam3(fast=False)``), kept for A/B benches and the bit-identity test;
    the model stays on the CPU.
    """
    try:
        model, info = cls.from_pretrained(str(directory), dtype=dtype, local_files_only=True, use_safetensors=True,
                                          output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - any parse/shape failure means a wrong or corrupt checkpoint
        from ..fastload import one_line

        raise WeightsMismatchError(f"could not load SAM-3 from {directory} ({one_line(err)}); the folder must hold "
                                   f"the transformers-format facebook/sam3 files (config.json, model.safetensors): "
                                   f"download them again with python -m body4d_core setup --models sam3.") from err
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise WeightsMismatchError(f"{directory} is not a complete facebook/sam3 checkpoint: {len(missing)} "
                                   f"{cls.__name__} weights are missing (e.g. {', '.join(sorted(missing)[:3])}); "
                                   f"download it again with python -m body4d_core setup --models sam3.")
    return model


def _rename_for(cls: Any) -> Any:
    """Checkpoint key -> model key for the tracker or the detector (transformers' documented mapping), None: skip."""
    if cls.__name__ == "Sam3Model":
        prefix = "detector_model."
        return lambda k: k[len(prefix):] if k.startswith(prefix) else None

    def tracker(k: str) -> str | None:
        for src, dst in (("detector_model.vision_encoder.backbone.", "vision_encoder.backbone."),
                         ("tracker_neck.", "vision_encoder.neck."), ("tracker_model.", "")):
            if k.startswith(src):
                return dst + k[len(src):]
        return None
    return tracker


def _load_fast(cls: Any, directory: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """The model built with parameters on meta (no random init), checkpoint tensors cast once and assigned.

    Same values as ``_from_pretrained`` (tested bit for bit) without transformers' per-key
    conversion machinery (one regular expression compiled per key); weights are placed on
    ``device`` straight from the memory-mapped file. Any folder this cannot read as the official
    layout (foreign config, missing keys, other shapes) goes through ``_from_pretrained``
    instead, so errors are its clear messages.
    """
    from ..fastload import load_transformers

    model = load_transformers(cls, directory, dtype, device, rename=_rename_for(cls), model_types=SAM3_MODEL_TYPES)
    if model is None:
        log.info("fast SAM-3 load of %s not possible; using transformers' loader", directory)
        return _from_pretrained(cls, directory, dtype).to(device)
    return model  # on ``device``, in eval mode


SAM3_MODEL_TYPES = ("sam3_video", "sam3_tracker_video", "sam3", "sam3_tracker")


def _load_detector_processor(directory: Path) -> Any:
    tf = _transformers()
    try:
        return tf.Sam3Processor.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - the tokenizer files are needed for the text prompt
        raise MissingWeightsError(f"the SAM-3 text detector needs the tokenizer/processor files of facebook/sam3 "
                                  f"in {directory} ({err}); download the whole repo again.") from err


def share_backbone(tracker: Any, detector: Any) -> None:
    """Let the detector use the tracker's ViT backbone (the checkpoint holds one copy for both)."""
    detector.vision_encoder.backbone = tracker.vision_encoder.backbone
