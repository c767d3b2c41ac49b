"""Placing a replica on its device through the environment its process starts with."""

from __future__ import annotations

# The variables that restrict which accelerators a process can see.
VISIBILITY = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


def device_env(device: str | None) -> dict[str, str]:
    """Environment for a replica on ``device`` ("cpu", "cuda", "cuda:N", "gpu:N" or "N")."""
    if device is None or device in ("cuda", "gpu"):
        return {}  # no placement: the process sees what the server sees
    if device == "cpu":
        return {name: "" for name in VISIBILITY}
    index = device.split(":")[-1]
    return {name: index for name in VISIBILITY}


def model_device(device: str | None) -> str:
    """What ``Model.device`` says in a process placed on ``device``."""
    return "cpu" if device in (None, "cpu") else "cuda"
