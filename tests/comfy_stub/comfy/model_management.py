"""Stand-in for comfy.model_management on a CPU-only machine."""

import torch

INTERRUPT = {"flag": False}
loaded: list = []


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def text_encoder_device():
    return torch.device("cpu")


def text_encoder_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def intermediate_dtype():
    return torch.float32


def should_use_bf16(device=None, *args, **kwargs):
    return False


def should_use_fp16(device=None, *args, **kwargs):
    return False


def module_size(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


def load_models_gpu(models, *args, **kwargs):
    loaded.extend(models)


def load_model_gpu(model):
    loaded.append(model)


def soft_empty_cache(force=False):
    return None


def interrupt_current_processing(value=True):
    INTERRUPT["flag"] = value


def processing_interrupted():
    return INTERRUPT["flag"]


def throw_exception_if_processing_interrupted():
    if INTERRUPT["flag"]:
        INTERRUPT["flag"] = False
        raise InterruptProcessingException()
