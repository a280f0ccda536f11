"""Stand-in for comfy.model_patcher.CoreModelPatcher."""


class CoreModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, **kwargs):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size


ModelPatcher = CoreModelPatcher
