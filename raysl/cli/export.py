"""`raysl export RUN_OR_CHECKPOINT OUT`: a trained backbone as a plain state dict + its spec."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import click

from raysl.errors import ConfigError, Problem

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("source", metavar="RUN_OR_CHECKPOINT")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="MLflow store or server of a RUN [default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db].",
)
def export(source: str, out: Path, tracking_uri: str | None) -> None:
    """Write the encoder of a checkpoint or of a study's best trial to directory OUT.

    RUN_OR_CHECKPOINT is a raysl checkpoint (an epoch_XXXX/ directory or its state.pt) or an
    MLflow run id: a study's parent run (its best trial's checkpoint), or that best trial's run.
    OUT gets backbone.pt (the backbone's state dict, tensors only) and encoder.json (the
    architecture and the eval view: side, mean, std). Load it without raysl internals:

    \b
      import raysl
      encoder = raysl.load_encoder("OUT")   # nn.Module: (B, C, H, W) uint8 -> (B, F) features
    """
    from raysl.checkpoint import load_checkpoint
    from raysl.export import encoder_from_state, write_export

    path = Path(source)
    with tempfile.TemporaryDirectory(prefix="raysl-export-") as tmp:
        if path.exists():
            where = str(path)
        elif _RUN_ID.match(source):
            path, where = _download(source, tracking_uri, Path(tmp))
        else:
            raise ConfigError(
                Problem(
                    f"{source!r} is neither a file nor an MLflow run id (32 hex characters); "
                    "give a checkpoint directory such as runs/NAME/epoch_0100 or a study's run id",
                    key="RUN_OR_CHECKPOINT",
                )
            )
        # a state without these (`{}`, another program's file) is named, not a KeyError
        encoder, meta = encoder_from_state(load_checkpoint(path, require=("config", "model")))
        meta["from"] = where
        write_export(encoder, meta, out)
    click.echo(
        f"wrote {out}/backbone.pt and encoder.json ({meta['backbone']}, {meta['feature_dim']}-d "
        f"features, {meta['channels']}x{meta['size']}x{meta['size']} input, epoch {meta['epoch']}) "
        f"from {where}"
    )
    click.echo(f'load it with: raysl.load_encoder("{out}")')


def _download(run_id: str, tracking_uri: str | None, tmp: Path) -> tuple[Path, str]:
    """The best checkpoint of a study's parent run (or of its best trial's run), downloaded."""
    from mlflow.exceptions import MlflowException

    from raysl.tracking.store import open_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri, must_exist=True)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            Problem(f"no MLflow run {run_id} in {uri}", key="RUN_OR_CHECKPOINT")
        ) from None
    tags = run.data.tags
    study = run
    if tags.get("raysl.kind") == "trial":
        parent = client.get_run(tags["mlflow.parentRunId"])
        if parent.data.tags.get("raysl.best_run_id") != run_id:
            raise ConfigError(
                Problem(
                    f"run {run_id} is a trial that is not its study's best, and only the best "
                    f"trial's checkpoint is kept: export the study's run {parent.info.run_id}, "
                    "or train that config with `raysl train` and export its checkpoint",
                    key="RUN_OR_CHECKPOINT",
                )
            )
        study = parent
    names = [f.path for f in client.list_artifacts(study.info.run_id, "best_checkpoint")]
    if "best_checkpoint/state.pt" not in names:
        raise ConfigError(
            Problem(
                f"run {study.info.run_id} has no best_checkpoint/state.pt artifact (a study that "
                "did not complete, or not a raysl study)",
                key="RUN_OR_CHECKPOINT",
            )
        )
    local = client.download_artifacts(study.info.run_id, "best_checkpoint/state.pt", str(tmp))
    return Path(local), f"run {study.info.run_id} ({uri})"
