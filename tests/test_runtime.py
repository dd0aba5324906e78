"""Device and precision choice: what `auto` picks on each kind of hardware, float16's loss scaler, and the
warning for a GPU that this torch cannot use."""
import warnings

import pytest
import torch

from hw2 import runtime
from hw2.config import Config
from hw2.errors import ConfigError
from hw2.runtime import (cpu_has_native_bf16, fused_sgd_can_skip, grad_scaler, resolve_device, resolve_dtype,
                         sum_dtype)


@pytest.mark.parametrize("flags,native", [("fpu avx2 avx512f avx512_bf16 amx_tile", True), ("fpu avx2 amx_bf16", True),
                                          ("fpu avx2 avx512f avx512bw", False), ("fpu avx2", False)])
def test_cpu_bf16_is_native_only_with_avx512_bf16_or_amx(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_a_cpu_is_bfloat16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16), ((6, 0), torch.float16)])
def test_auto_on_a_gpu_is_bfloat16_from_ampere_and_float16_before(monkeypatch, capability, expected):
    # a Colab T4 (7.5) reports bfloat16 "supported" through emulation; cuDNN has no bf16 convolutions there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_dtype("auto", torch.device("cuda")) == expected


def test_explicit_dtypes_and_a_wrong_one():
    cpu = torch.device("cpu")
    assert [resolve_dtype(d, cpu) for d in ("bfloat16", "float16", "float32")] == \
        [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(ConfigError, match="float8"):
        resolve_dtype("float8", cpu)


def test_loss_scaler_only_for_float16():
    cpu = torch.device("cpu")
    assert isinstance(grad_scaler(cpu, torch.float16), torch.amp.GradScaler)
    assert grad_scaler(cpu, torch.bfloat16) is None and grad_scaler(cpu, torch.float32) is None


def test_a_gpu_torch_cannot_see_is_a_warning_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "system_has_nvidia_gpu", lambda: True)
    with pytest.warns(UserWarning, match="NVIDIA GPU.*cannot use it"):
        assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(runtime, "system_has_nvidia_gpu", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GPU anywhere: nothing to warn about
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")



@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_picks_cuda_then_apples_gpu_then_the_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(runtime, "system_has_nvidia_gpu", lambda: False)
    assert resolve_device("auto") == torch.device(expected)


def test_mps_is_refused_with_what_to_do_where_torch_sees_no_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='mps' was asked for but torch sees no Apple GPU.*; "
                                            r"use device='cpu' or device='auto'$"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert Config(device="mps").device == "mps"


def test_auto_on_an_apple_gpu_is_float32_and_explicit_dtypes_stay(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # the host CPU's bfloat16 is no reason
    mps = torch.device("mps")
    assert resolve_dtype("auto", mps) == torch.float32
    assert resolve_dtype("bfloat16", mps) == torch.bfloat16 and resolve_dtype("float16", mps) == torch.float16


def test_on_mps_the_optimizer_skips_on_the_host_and_sums_are_float32():
    """torch's fused SGD on MPS refuses found_inf, and MPS has no float64."""
    assert [fused_sgd_can_skip(torch.device(d)) for d in ("cpu", "cuda", "mps")] == [True, True, False]
    assert [sum_dtype(torch.device(d)) for d in ("cpu", "cuda", "mps")] == [torch.float64, torch.float64, torch.float32]
