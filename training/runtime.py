"""Where and how a job computes: device, precision, memory format, seed, backend flags.

One frozen `Runtime` per job, made from the trainer settings, shared by training, evaluation, the
LR range test and the benchmarks, so they all run the same way.
"""
import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(setting):
    """trainer.device: auto = the GPU when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str        # fp32 | bf16 | fp16 (autocast)
    channels_last: bool

    @classmethod
    def from_config(cls, trainer):
        device = pick_device(trainer.device)
        setting = trainer.channels_last
        channels_last = device.type == "cuda" if setting == "auto" else bool(setting)
        return cls(device, str(trainer.precision), channels_last)

    def setup(self, seed):
        """Seed torch and set the backend flags (TF32 and cudnn autotuning on a GPU)."""
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return self

    def autocast(self):
        dtype = DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, model):
        """The model on this device, in this memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
