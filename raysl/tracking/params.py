"""Which config keys a run logs as params: only those that can change what it does.

A trial's full dotted config has ~60 keys, many of which cannot matter for it: the arguments
of a loss term whose weight is 0 (a trial without SupCon would log `loss.supcon.temperature`),
the settings of data sources it does not read, the probe's settings without a probe. Those are
left out of MLflow's params, and therefore out of `raysl report`, the study's leaderboard and
MLflow's Compare view alike. The rules work on dotted keys alone (no torch, no config import).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_DOWNLOADABLE = {"cifar10", "cifar100", "stl10"}  # sources torchvision can download
_RESIZED = {"imagefolder", "parquet"}  # sources that honour data.image_size
_RAMP = ("ramp_start", "ramp_end")


def relevant_params(config: Mapping[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """`config` (dotted) without the keys that cannot affect the run; keys in `keep` (the
    searched ones) always stay, so a searched weight of 0 is still shown.

    Left out:
    - `loss.<term>.*` of a term that is off (weight 0 and no ramp from a weight > 0), and
      `ramp_start`/`ramp_end` of a term without a ramp (`ramp_from` unset);
    - `data.synthetic.*` unless `data.source` is synthetic, `data.download` for sources that
      cannot download, `data.image_size` for sources that do not resize;
    - `eval.probe_*` without `eval.linear_probe`; `optim.lars_trust` unless the optimizer is
      LARS; `optim.min_lr_ratio` with a constant schedule; `model.width` unless the backbone
      is the ConvNet, `model.stem` for the ConvNet (it has no stem choice).
    """
    keep = set(keep)
    source = config.get("data.source")
    backbone = config.get("model.backbone")
    off_terms = {
        key.split(".")[1]
        for key, value in config.items()
        if key.startswith("loss.")
        and key.endswith(".weight")
        and float(value or 0) == 0
        and float(config.get(key[: -len("weight")] + "ramp_from") or 0) == 0
    }

    def relevant(key: str) -> bool:
        parts = key.split(".")
        if parts[0] == "loss" and len(parts) == 3:
            term, arg = parts[1], parts[2]
            if term in off_terms:
                return False
            return not (arg in _RAMP and config.get(f"loss.{term}.ramp_from") is None)
        if key.startswith("data.synthetic."):
            return source == "synthetic"
        if key == "data.download":
            return source in _DOWNLOADABLE
        if key == "data.image_size":
            return source in _RESIZED
        if key.startswith("eval.probe_"):
            return bool(config.get("eval.linear_probe"))
        if key == "optim.lars_trust":
            return config.get("optim.name", "lars") == "lars"
        if key == "optim.min_lr_ratio":
            return config.get("optim.schedule", "cosine") != "constant"
        if key == "model.width":
            return backbone in (None, "convnet")
        if key == "model.stem":
            return backbone != "convnet"
        return True

    return {k: v for k, v in config.items() if k in keep or relevant(k)}
