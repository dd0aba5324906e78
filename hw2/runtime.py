"""Where and in what precision the networks run: the platform's ways (Windows or Unix), device and dtype
choice, autocast, the float16 loss scaler."""
import contextlib
import platform
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path

import torch

from hw2.errors import ConfigError, field

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# The one switch between Windows' ways and Unix's (the modeldir lock's kind, the stop signals), read when used:
# tests/test_portability.py sets it to run Windows' branches on Linux.
WINDOWS = sys.platform == "win32"


def stop_signals():
    """The signals that ask a run to stop after its step: Ctrl-C (SIGINT) everywhere, and SIGTERM on Unix (kill,
    a scheduler's time limit); on Windows, where SIGTERM cannot be delivered to a handler (os.kill ends the
    process), Ctrl-Break (SIGBREAK)."""
    return (signal.SIGINT, signal.SIGBREAK) if WINDOWS else (signal.SIGINT, signal.SIGTERM)


def parse_device(device):
    """A device's name -> torch.device, or a ConfigError that lists the names hw2 takes."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{field('device')} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") \
            from None


def resolve_device(device):
    """"auto" -> "cuda" when torch sees a CUDA GPU, else "mps" when it sees an Apple GPU, else "cpu" (with a
    warning when the system has an NVIDIA GPU that this torch cannot use)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        if system_has_nvidia_gpu():
            warnings.warn(f"this machine has an NVIDIA GPU, but torch {torch.__version__} cannot use it "
                          f"({'a CPU-only build' if torch.version.cuda is None else 'is the driver too old?'}): "
                          "training runs on the CPU. README.md, 'Set up', says how to install a CUDA build.",
                          stacklevel=2)
        return torch.device("cpu")
    device = parse_device(device)
    instead = f"use {field('device', 'cpu')} or {field('device', 'auto')}"
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field('device', str(device))} was asked for but torch sees no CUDA GPU; {instead}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{field('device', str(device))} was asked for but torch sees no Apple GPU (MPS needs a "
                          f"Mac with Apple silicon and a torch built with MPS, as PyPI's macOS wheels are); {instead}")
    return device


def system_has_nvidia_gpu():
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """AVX512-BF16 or AMX: without them oneDNN's bfloat16 convolutions fall back to slow kernels, far slower than
    float32. Read from Linux's /proc/cpuinfo; elsewhere False."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_dtype(dtype, device):
    """The precision of the forward pass. "auto": bfloat16 where the hardware runs it natively (CUDA
    capability 8.0 and later, CPUs with AVX512-BF16 or AMX), float16 on older GPUs (whose bfloat16 is
    emulated, and cuDNN has no bfloat16 convolutions before 8.0), float32 on Apple GPUs (MPS: no lower
    precision has been measured to work there for hw2) and on other CPUs."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"{field('dtype')} must be 'auto', {', '.join(map(repr, DTYPES))}; got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "mps":
        return torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def dtype_name(dtype):
    """torch.bfloat16 -> 'bfloat16': a dtype as messages, resolved.json and the benchmarks name it."""
    return str(dtype).removeprefix("torch.")


def fused_sgd_can_skip(device):
    """Whether SGD's fused kernel on `device` takes the found_inf flag that skips a step without the host waiting
    (train_step). MPS's does not: torch refuses it there ("grad_scale and found_inf are not supported on MPS")."""
    return device.type != "mps"


def sum_dtype(device):
    """The dtype of running sums on `device`: float64, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


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


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo), or the machine's architecture where it does not say."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.machine()


def processor(device):
    """What runs the networks, and whether it has native bfloat16 (what dtype auto goes by)."""
    native_bf16 = resolve_dtype("auto", device) == torch.bfloat16
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"processor": torch.cuda.get_device_name(device), "cuda_capability": f"{major}.{minor}",
                "native_bfloat16": native_bf16, "host_cpu": cpu_name(), "cuda": torch.version.cuda}
    return {"processor": cpu_name(), "native_bfloat16": native_bf16}
