"""The calibration hold-out: a seeded, location-grouped, class-stratified part of the TRAIN split.

Temperature scaling must be fitted on clips the model never trained on, and never on the
evaluate split. :func:`holdout_split` carves them out of the training split:

- grouped by recording location (TAU's ``identifier`` in meta.csv): every clip of a location
  lands on one side of the cut, so the calibration clips share no location with the clips the
  model trains on (TAU's own train/evaluate split is location-disjoint too, so neither do they
  with the evaluate split);
- stratified by class: per class, locations are taken in a seeded random order until at least
  ``fraction`` of the class's clips are held out; at least one location of every class is held
  out and at least one is kept for training;
- devices as far as possible: while some training device has no held-out clip, the next
  location taken is the first (in that seeded order) that adds one.

``asc-train`` holds the split out (config key ``holdout``) and records it in its checkpoints;
``asc-calibrate`` recomputes it from the same data, fraction and seed and checks it is the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS
from asc_deploy.train.dataset import Clip


@dataclass(frozen=True)
class HoldoutSplit:
    """The training split cut in two along locations: ``train`` (what the model trains on) and
    ``calibration`` (held out for fitting the temperature), each in the split's file order."""

    train: list[Clip]
    calibration: list[Clip]
    fraction: float
    seed: int

    @property
    def locations(self) -> list[str]:
        """The held-out locations, sorted."""
        return sorted({str(c.location) for c in self.calibration})

    def record(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``torch.load(weights_only=True)`` reads it back)."""
        return {"fraction": self.fraction, "seed": self.seed, "clips": [c.filename for c in self.calibration],
                "locations": self.locations, "train_clips": len(self.train)}


def holdout_split(clips: Sequence[Clip], fraction: float, seed: int) -> HoldoutSplit:
    """Hold out about ``fraction`` (0 < fraction < 1) of every class's training clips, whole
    locations at a time (module doc). AscError when a clip has no location or label, or a class
    has fewer than two locations (it could not be on both sides of the cut)."""
    if not 0 < fraction < 1:
        raise AscError(f"the hold-out fraction must be in (0, 1), got {fraction}")
    unplaced = [c.filename for c in clips if c.location is None or c.label is None]
    if unplaced:
        raise AscError(f"{len(unplaced)} training clip(s) have no location (meta.csv 'identifier') or label, e.g. {unplaced[0]}: "
                       "a location-grouped hold-out needs both")
    by_class: dict[int, dict[str, list[Clip]]] = {}
    for clip in clips:
        by_class.setdefault(int(clip.label), {}).setdefault(str(clip.location), []).append(clip)
    devices = {c.device for c in clips if c.device}
    rng = random.Random(seed)
    covered: set[str] = set()
    held: set[str] = set()  # locations held out (all their clips, whatever their class)
    for label in sorted(by_class):
        locations = by_class[label]
        if len(locations) < 2:
            raise AscError(f"class {CLASS_LABELS[label]!r} has {len(locations)} recording location(s) in the training split: "
                           "holding one out for calibration needs at least two")
        order = sorted(locations)
        rng.shuffle(order)
        target = fraction * sum(len(v) for v in locations.values())
        taken = 0
        while (taken < target or taken == 0) and len(order) > 1:
            missing = devices - covered
            pick = next((loc for loc in order if missing & {c.device for c in locations[loc]}), order[0])
            order.remove(pick)
            held.add(pick)
            taken += len(locations[pick])
            covered |= {c.device for c in locations[pick] if c.device}
    calibration = [c for c in clips if c.location in held]
    train = [c for c in clips if c.location not in held]
    return HoldoutSplit(train=train, calibration=calibration, fraction=float(fraction), seed=int(seed))
