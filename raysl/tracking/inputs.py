"""What a run was trained on, in MLflow: the dataset as a run input, the config as a file.

- **Dataset input** (the runs table's Dataset column, the run page's "Datasets used"): name =
  the source (`digits`, `cifar10`, ...), source = where it is read from (the data directory, or
  the code that builds it), profile = split sizes, classes and image shape, digest = SHA-256 of
  the split's images and labels (first 16 hex digits), so two runs with the same digest saw the
  same images in the same splits. Sources that are cheap to load (digits, synthetic, Fashion-
  MNIST, CIFAR) are loaded once per study on the driver for this; for the others (image folders,
  Parquet, STL-10), or where the driver cannot read the data, the digest covers the data config
  and the directory's file names, sizes and times, and the profile says so.
- **`config.yaml`** artifact per trial: the trial's resolved config as a run file, so
  `raysl train config.yaml` retrains exactly that trial (with the search space's `eval.test`:
  the study's trials skip the test split, a retrained run reports on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from raysl.yamlio import flatten, unflatten

logger = logging.getLogger(__name__)

_LOADED = ("digits", "synthetic", "fashion_mnist", "cifar10", "cifar100")
# the data keys that change which images land in which split
_IDENTITY = ("source", "root", "val_fraction", "train_limit", "image_size", "synthetic")


class RunInputs:
    """Logs dataset inputs and config files; one dataset description per data identity."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._datasets: dict[str, Any] = {}

    def log(
        self,
        run_id: str,
        cfg: Any,
        name: str | None,
        description: str = "",
        context: str = "training",
    ) -> None:
        """The dataset of `cfg` as an input of `run_id`, and (with a `name`) `cfg` as its
        `config.yaml` (a run file of that name).

        Failures are logged, never raised: these are records of a run, not part of it.
        """
        try:
            from mlflow.entities import DatasetInput, InputTag

            dataset = self.dataset(cfg)
            tags = [InputTag("mlflow.data.context", context)]
            self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
        except Exception:
            logger.warning("could not log the dataset input of run %s", run_id, exc_info=True)
        if name is None:
            return
        try:
            self.log_config(run_id, cfg, name, description)
        except Exception:
            logger.warning("could not log config.yaml of run %s", run_id, exc_info=True)

    def log_config(self, run_id: str, cfg: Any, name: str, description: str = "") -> None:
        doc = {
            "name": name,
            "description": description,
            "config": unflatten(flatten(cfg.model_dump(exclude_none=True))),
        }
        with tempfile.TemporaryDirectory(prefix="raysl-config-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
            self.client.log_artifact(run_id, str(path))

    def dataset(self, cfg: Any) -> Any:
        """The `mlflow.entities.Dataset` of `cfg.data` (split by `cfg.seed`), cached."""
        data = cfg.data.model_dump()
        key = json.dumps(
            {k: data.get(k) for k in _IDENTITY} | {"seed": cfg.seed}, sort_keys=True, default=str
        )
        if key not in self._datasets:
            self._datasets[key] = describe_dataset(cfg.data, cfg.seed)
        return self._datasets[key]


def describe_dataset(data_cfg: Any, seed: int) -> Any:
    """An `mlflow.entities.Dataset` for `data_cfg`: name, source, digest, profile."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset

    source_name = data_cfg.source
    root = _root(data_cfg)
    if root is not None:
        source = LocalArtifactDatasetSource(str(root))
    else:
        source = CodeDatasetSource({"raysl.data.source": source_name})
    digest = profile = None
    if source_name in _LOADED:
        try:
            digest, profile = _content_digest(data_cfg, seed)
        except Exception:  # e.g. the data is on the workers only: describe what can be seen
            logger.warning("could not load %s on the driver for its digest", source_name)
    if digest is None:
        digest, profile = _config_digest(data_cfg, seed, root)
    meta = MetaDataset(source=source, name=source_name, digest=digest)._to_mlflow_entity()
    return Dataset(
        name=meta.name,
        digest=digest,
        source_type=meta.source_type,
        source=meta.source,
        schema=meta.schema,
        profile=json.dumps(profile),
    )


def _root(data_cfg: Any) -> Path | None:
    """`data.root`, absolute; None for sources read from their own default place or code."""
    return Path(data_cfg.root).expanduser().resolve() if data_cfg.root else None


def _content_digest(data_cfg: Any, seed: int) -> tuple[str, dict[str, Any]]:
    from raysl.data.splits import load_splits

    splits = load_splits(data_cfg, seed=seed)
    sha = hashlib.sha256()
    profile: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is None:
            continue
        sha.update(name.encode())
        sha.update(part.images.contiguous().numpy().tobytes())
        sha.update(part.labels.contiguous().numpy().tobytes())
        profile[f"{name}_images"] = len(part)
    _, channels, height, width = splits.train.images.shape
    profile.update(
        classes=splits.num_classes, image_shape=[int(channels), int(height), int(width)], seed=seed
    )
    return sha.hexdigest()[:16], profile


def _config_digest(data_cfg: Any, seed: int, root: Path | None) -> tuple[str, dict[str, Any]]:
    data = data_cfg.model_dump()
    sha = hashlib.sha256(
        json.dumps({k: data.get(k) for k in _IDENTITY} | {"seed": seed}, default=str).encode()
    )
    files = 0
    if root is not None and root.exists():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            sha.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            files += 1
    profile = {
        "digest_of": "the data config and the files' names, sizes and times (not loaded here)",
        "files": files,
        "seed": seed,
    }
    return sha.hexdigest()[:16], profile
