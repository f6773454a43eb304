"""Ensemble: one anomaly map fused from several methods, each normalised by its healthy spread.

The shipped methods fail in complementary ways (docs/benchmarks.md): DISYRE heals tumours and
strokes but not small lesions; the DDPMs at a low noise level only denoise, so they miss large
lesions but see small ones. No method repository fuses them; this one does, by a rule fixed on
the benchmark's tuning subjects:

1. each member runs at its own defaults, without its final smoothing;
2. its raw residual is divided by its *healthy spread* at that intensity: the 95th percentile
   of the member's scores on healthy calibration slices, in ten bins of the member's
   pseudo-healthy intensity (a 3-mm plaque in flat white matter then outscores the residual
   noise of the cortex and the CSF, where every model errs on a brain it has not seen);
3. the normalised map is median filtered (``smoothing``), divided by its healthy 99.5th
   percentile (so every member speaks in units of its own healthy tail), and
4. the members' maps are averaged (``rule='mean'``) or their maximum taken (``'max'``).

The pseudo-healthy image is the members' mean restoration. An ensemble model is a folder like
any other (``config.json`` + ``model.safetensors``): the config names the member methods and
models (``training.members``), the safetensors file holds the fusion rule's fitted tables
(bin edges, each member's spread per bin and its healthy scale); ``scripts/make_ensemble.py``
fits them (:func:`napari_uad.training.ensemble.fit_ensemble`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from .base import Method
from .filters import median_filter2d

RULES = ("mean", "max")


class Ensemble(Method):
    """Fusion of member methods' maps, each in units of its own healthy spread.

    Parameters (``restore(**params)``)
    ----------------------------------
    smoothing : int
        Median filter side applied to each member's normalised map before fusion (0: none).
    rule : {'mean', 'max'}
        How the members' normalised maps combine.
    """

    name = "ensemble"
    description = "Ensemble: DISYRE and ADDM maps, each normalised by its healthy spread, averaged"
    model_methods = ("ensemble",)
    default_model = "ensemble"
    defaults: dict[str, Any] = {"smoothing": 9, "rule": "mean"}

    def __init__(self, members, tables, config, *, device=None):
        super().__init__(None, config, device=device)
        if not members:
            raise ValueError("an ensemble needs at least one member method")
        self.members = list(members)
        self.edges = tables["edges"].float().to(self.device)
        self.spreads = [tables[f"spread.{i}"].float().to(self.device) for i in range(len(members))]
        self.scales = [float(v) for v in tables["scale"].float()]
        self.member_params = [m.resolve_parameters(smoothing=0) for m in self.members]
        self.stochastic = any(m.stochastic for m in self.members)

    @classmethod
    def from_checkpoint(cls, folder, *, device="cpu") -> Ensemble:
        """The ensemble of a model folder, with every member method loaded from its model."""
        from ..methods import get_method_class
        from ..models.checkpoint import CheckpointError, load_config, weights_sha256
        from ..models.registry import resolve_model

        folder = Path(folder)
        config = load_config(folder)
        listed = (config.training or {}).get("members")
        if not isinstance(listed, list) or not listed:
            raise CheckpointError(f"{folder / 'config.json'}: training.members lists no members")
        tables = load_tables(folder / "model.safetensors", len(listed))
        members = []
        for entry in listed:
            member_class = get_method_class(str(entry.get("method")))
            if "smoothing" not in member_class.defaults:
                raise CheckpointError(
                    f"{folder.name}: member {member_class.name} has no smoothing parameter"
                )
            path = resolve_model(str(entry.get("model")))
            member = member_class.from_checkpoint(path, device=device)
            if member.config.grid != config.grid:
                raise CheckpointError(
                    f"{folder.name}: member model {member.config.name!r} works on a "
                    f"{member.config.grid} grid, the ensemble on {config.grid}"
                )
            recorded = entry.get("sha256")
            if recorded and recorded != weights_sha256(path):
                warnings.warn(
                    f"ensemble {config.name!r} was fitted to another {member.config.name!r} "
                    "model; refit it (scripts/make_ensemble.py) for calibrated scores",
                    stacklevel=2,
                )
            members.append(member)
        return cls(members, tables, config, device=device)

    def validate(self, params: dict[str, Any]) -> None:
        if int(params["smoothing"]) < 0:
            raise ValueError("smoothing must be >= 0")
        if params["rule"] not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {params['rule']!r}")

    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        return sum(
            m.evaluations_per_slice(p)
            for m, p in zip(self.members, self.member_params, strict=True)
        )

    def network_evaluations(self, params: dict[str, Any]) -> int:
        return sum(
            m.network_evaluations(p) for m, p in zip(self.members, self.member_params, strict=True)
        )

    def _restore_batch(self, images, masks, params, generators):
        states = [g.get_state() for g in generators]
        restored, maps = [], []
        size = int(params["smoothing"])
        for index, member in enumerate(self.members):
            # Each member draws the randomness it would draw alone.
            for generator, state in zip(generators, states, strict=True):
                generator.set_state(state)
            steps = member._restore_batch(images, masks, self.member_params[index], generators)
            healthy, anomaly = yield from steps
            normalised = normalised_map(
                anomaly, healthy, masks, self.edges, self.spreads[index], size
            )
            maps.append(normalised / self.scales[index])
            restored.append(healthy)
        stacked = torch.stack(maps)
        fused = stacked.mean(dim=0) if params["rule"] == "mean" else stacked.amax(dim=0)
        return torch.stack(restored).mean(dim=0), fused * masks

    def spread_at(self, index: int, healthy: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s healthy spread at each pixel's pseudo-healthy intensity."""
        return self.spreads[index][intensity_bins(healthy, self.edges)]


def normalised_map(anomaly, healthy, masks, edges, spread, smoothing: int) -> torch.Tensor:
    """A member's map in units of its healthy spread: ``anomaly`` divided by ``spread`` at the
    bin of each pixel's pseudo-healthy intensity, then median filtered (``smoothing`` > 1).

    All images are (B, 1, H, W) tensors; ``edges`` and ``spread`` are the fitted tables. Used
    both to fit the tables and to apply them, so the two cannot drift apart.
    """
    normalised = anomaly / spread[intensity_bins(healthy, edges)] * masks
    if smoothing > 1:
        normalised = median_filter2d(normalised, smoothing) * masks
    return normalised


def intensity_bins(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index of each value for bin ``edges`` (B + 1 increasing values); values outside
    fall into the first or last bin."""
    inner = edges[1:-1].contiguous()
    return torch.bucketize(values.contiguous(), inner, right=True).clamp(0, len(edges) - 2)


def load_tables(path: Path, members: int) -> dict[str, torch.Tensor]:
    """The fitted tables of an ensemble (``edges``, ``spread.<i>``, ``scale``), checked."""
    from ..models.checkpoint import CheckpointError, read_tensors

    tables = read_tensors(path)
    needed = ["edges", "scale", *(f"spread.{i}" for i in range(members))]
    missing = [name for name in needed if name not in tables]
    if missing:
        raise CheckpointError(f"{path}: no ensemble tables {missing} (refit the ensemble)")
    bins = len(tables["edges"]) - 1
    if bins < 1 or any(len(tables[f"spread.{i}"]) != bins for i in range(members)):
        raise CheckpointError(f"{path}: the spread tables do not match the bin edges")
    if len(tables["scale"]) != members:
        raise CheckpointError(f"{path}: {len(tables['scale'])} scales for {members} members")
    for name in needed:
        values = tables[name].float()
        if not torch.isfinite(values).all() or (name != "edges" and (values <= 0).any()):
            raise CheckpointError(f"{path}: {name} holds non-finite or non-positive values")
    return tables
