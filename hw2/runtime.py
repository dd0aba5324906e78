"""Where and in what precision the networks run: device and dtype choice, autocast."""
import contextlib

import torch


def resolve_device(device):
    """"auto" -> "cuda" when a GPU is present, else "cpu"."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def bf16_supported(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN needs native bf16 instructions (AVX512-BF16 or AMX); without them bfloat16 convolutions
    # fall back to reference kernels (measured 15x slower than float32 on a 2-core AVX2-only EPYC).
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_dtype(dtype, device):
    """"auto" -> bfloat16 autocast where the device runs it fast, else float32."""
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def autocast(device, dtype):
    """bfloat16 autocast for the forward pass, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
