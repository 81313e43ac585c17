"""The compute device a setting names, and the precision a model runs in there. A device's form is
checked with the other settings; whether this machine has it is checked only when a model is put on
it, so a GPU cluster's settings can still be inspected (`msf status`, `--dry-run`) on a CPU login node."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from msf.pipeline.errors import MsfError

_FORM = re.compile(r"cpu|mps|cuda(:\d+)?")


def _device_form(value: str) -> str:
    if not _FORM.fullmatch(value):
        raise ValueError(f"{value!r} is not a device: use cpu, cuda, cuda:N or mps")
    return value


Device = Annotated[str, AfterValidator(_device_form)]


# The dtype a torch model runs in. "auto": bfloat16 on CUDA (float32's range, so no overflow in a
# 24-layer encoder, at the tensor cores' half-precision rate), float32 elsewhere (CPUs gain little).
Precision = Literal["auto", "float32", "float16", "bfloat16"]
# CTranslate2's compute type; "auto": int8 on CPU (its fastest there), float16 on CUDA.
ComputeType = Literal["auto", "int8", "int8_float16", "int8_float32", "float16", "bfloat16", "float32"]


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bfloat16" if device.startswith("cuda") else "float32"


def resolve_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device.startswith("cuda") else "int8"


def precision_fingerprint(params: dict[str, Any], precision: str, device: str) -> dict[str, Any]:
    """Fingerprint parameters with the precision as it resolves on the device (an "auto" entry made on
    a GPU differs from one made on a CPU); float32 leaves no trace, so entries made before precision
    was a setting stay fresh."""
    out = {k: v for k, v in params.items() if k != "precision"}
    resolved = resolve_precision(precision, device)
    return out if resolved == "float32" else {**out, "precision": resolved}


def torch_dtype(precision: str, device: str) -> Any:
    import torch

    return getattr(torch, resolve_precision(precision, device))


class DeviceUnavailable(MsfError, RuntimeError):
    """A device the settings name that this machine (or this build of torch/CTranslate2) lacks."""


def require_device(device: str, setting: str, runtime: Literal["torch", "ctranslate2"] = "torch") -> None:
    """Refuse, by name, a device that the runtime that will use it cannot reach here."""
    try:
        _device_form(device)
    except ValueError as e:  # an API caller's string that no settings validation saw
        raise DeviceUnavailable(f"{setting}={e}") from None
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return
    if runtime == "ctranslate2":
        import ctranslate2

        have = ctranslate2.get_cuda_device_count() if kind == "cuda" else 0
        seen = f"CUDA GPUs visible to CTranslate2: {have}" if kind == "cuda" else "CTranslate2 has no mps support"
    else:
        import torch

        if kind == "mps":
            have = int(torch.backends.mps.is_available())
            seen = f"Apple GPUs available to torch: {have}"
        else:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            seen = f"CUDA GPUs visible to torch: {have}" + (
                f"; torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else "")
    if have <= int(index or 0):
        raise DeviceUnavailable(f"{setting}={device}: this machine has no such device ({seen}); "
                                f"set {setting}=cpu or run where that device is")


def place(model: Any, device: str, setting: str) -> Any:
    """`model.to(device)` once the device is known to exist, so a missing GPU is one clear error."""
    require_device(device, setting)
    return model.to(device)
