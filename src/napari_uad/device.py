"""Choosing the torch device: GPU when there is one, CPU otherwise, overridable."""

from __future__ import annotations

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices present on this machine, best first (always ends with ``"cpu"``)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(choice: str = "auto"):
    """A ``torch.device`` for ``"auto"`` (best available), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.

    Raises
    ------
    ValueError
        When the requested device is not present.
    """
    import torch

    choice = (choice or "auto").lower()
    if choice == "auto":
        return torch.device(available_devices()[0])
    kind = choice.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {choice!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if kind != "cpu" and kind not in available_devices():
        raise ValueError(f"device {choice!r} is not available here (found: {available_devices()})")
    return torch.device(choice)
