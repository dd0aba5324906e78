"""Where and in what precision the networks run: device and dtype choice, autocast, the float16 loss scaler."""
import contextlib
import re
import shutil
import warnings
from pathlib import Path

import torch

from hw2.errors import ConfigError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device):
    """"auto" -> "cuda" when torch sees a GPU, else "cpu" (with a warning when the system has a GPU that
    this torch cannot use)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if system_has_nvidia_gpu():
            warnings.warn(f"this machine has an NVIDIA GPU, but torch {torch.__version__} cannot use it "
                          f"({'a CPU-only build' if torch.version.cuda is None else 'is the driver too old?'}): "
                          "training runs on the CPU. README.md, 'Set up', says how to install a CUDA build.",
                          stacklevel=2)
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto "
                          "(device = 'cpu' or 'auto' in a notebook)")
    return device


def system_has_nvidia_gpu():
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """AVX512-BF16 or AMX: without them oneDNN's bfloat16 convolutions fall back to slow kernels (measured 15x
    slower than float32 on a 2-core AVX2-only EPYC). Read from Linux's /proc/cpuinfo; elsewhere False."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_dtype(dtype, device):
    """The precision of the forward pass. "auto": bfloat16 where the hardware runs it natively (CUDA
    capability 8.0 and later, CPUs with AVX512-BF16 or AMX), float16 on older GPUs (whose bfloat16 is
    emulated, and cuDNN has no bfloat16 convolutions before 8.0), float32 on other CPUs."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be 'auto', {', '.join(map(repr, DTYPES))}; got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def use_fastest_kernels(device):
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the fastest (the
    shapes repeat every step)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device, dtype):
    """Autocast to bfloat16 or float16 for the forward pass, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device, dtype):
    """float16's gradients underflow without loss scaling: a GradScaler for float16, else None (bfloat16
    has float32's range)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

