"""The one training loop: plain PyTorch, alone, under torchrun, or inside a Ray Train worker.

`fit(cfg, reporter, runtime)` pretrains an encoder with the weighted loss terms of `cfg.loss`.
It never imports Ray: Ray Train sets the torchrun environment and starts the process group
before calling it, so `fit()` only sees `torch.distributed`. It reports to `reporter` once per
epoch on every rank and attaches a checkpoint on rank 0.

Determinism: batches come from (seed, epoch) and augmentation parameters from
(seed, epoch, step) for the whole global batch, so a run resumed from a checkpoint, and a run
on W processes with the same global batch, see the same images and views as one
uninterrupted single-process run.

One optimizer step is `raysl.train_step`; what a checkpoint holds besides the weights (RNG
states, `STATE_KEYS`) and loading it back is `raysl.train_state`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from raysl import distributed
from raysl.augment import Augment
from raysl.batches import DataFeed, in_memory_feed, step_seed
from raysl.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from raysl.config import Config
from raysl.data.splits import knn_bank_problem
from raysl.errors import ConfigError, Problem
from raysl.evaluate import Evaluator
from raysl.losses import build_criterion
from raysl.models import build_model, convert_sync_batchnorm
from raysl.optim import build_optimizer
from raysl.reporting import Reporter, RunInfo
from raysl.runtime import Runtime, use_channels_last
from raysl.train_state import (
    STATE_KEYS,
    encoder_info,
    load_modules,
    rng_state,
    seed_everything,
    set_rng_state,
)
from raysl.train_step import check_finite, train_step
from raysl.train_values import Values, apply, curves, kept_terms


def fit(
    cfg: Config,
    reporter: Reporter | None = None,
    runtime: Runtime | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | Mapping[str, Any] | None = None,
    name: str = "run",
    feed: DataFeed | None = None,
    mutable: Iterable[str] = (),
) -> dict[str, float]:
    """Pretrain with `cfg`; returns the final metrics (last epoch + final evaluation).

    Args:
        reporter: receives progress and metrics (see `raysl.reporting.Reporter`).
        runtime: device and rank; default from the environment (torchrun variables).
        checkpoint_dir: rank 0 writes `epoch_XXXX/` checkpoints here (None: no checkpoints).
        resume_from: a checkpoint directory to continue from, or the state already loaded
            from one (`load_checkpoint(path, require=STATE_KEYS)`).
        feed: where batches come from; default: `cfg.data` loaded into memory.
        mutable: keys whose values may differ from those of the checkpoint resumed (PBT's
            `mutate`; `raysl.mutable`); they are tracked in the run's lineage
            (`raysl.train_values`), as `schedule:` keys are.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the reporter's `fail` saw it first.
        ConfigError: the config cannot run on this data or hardware.
    """
    reporter = reporter or Reporter()
    rt = runtime or Runtime.from_env(cfg.device)
    started = time.perf_counter()
    try:
        feed = feed or in_memory_feed(cfg.data, cfg.seed, rt)
        out = Path(checkpoint_dir) if checkpoint_dir else None
        run = _Run(cfg, rt, name, out, feed, mutable)
        run.started = started
        if resume_from is not None:
            state = resume_from
            if not isinstance(state, Mapping):
                state = load_checkpoint(resume_from, require=STATE_KEYS)
            run.restore(state)
        return run.train(reporter)
    except BaseException as error:
        reporter.fail(error)
        raise


class _Run:
    """Everything one `fit()` call builds, and the epoch loop over it."""

    def __init__(
        self,
        cfg: Config,
        rt: Runtime,
        name: str,
        checkpoint_dir: Path | None,
        feed: DataFeed,
        mutable: Iterable[str] = (),
    ) -> None:
        self.cfg, self.rt, self.name, self.checkpoint_dir = cfg, rt, name, checkpoint_dir
        self.values, self.cfg_now = Values(cfg, mutable), cfg  # what is in force (schedule, PBT)
        seed_everything(cfg.seed)
        self.splits = splits = feed.splits
        self.batches = feed.train
        self.num_samples = feed.num_samples
        self.feed = feed
        self.started = time.perf_counter()  # fit() overwrites it with its own start
        _, channels, height, _ = splits.train.images.shape
        self.augment = Augment(cfg.augment, channels, height, splits.mean, splits.std)
        self.criterion = build_criterion(
            cfg.active_terms(),
            keep=kept_terms(cfg, self.values.keys),
            dim=cfg.model.proj_dim,
            num_classes=splits.num_classes,
            num_samples=feed.num_samples,
            epochs=cfg.epochs,
        ).to(rt.device)
        if "labels" in self.criterion.requires and bool((splits.train.labels < 0).any()):
            raise ConfigError(
                Problem(
                    f"a term needs labels but source '{splits.name}' has unlabeled training images",
                    key="loss",
                )
            )
        bank = int((splits.train.labels >= 0).sum())  # the monitoring kNN bank's images
        if problem := knn_bank_problem(cfg.eval.knn_k, min(bank, cfg.eval.bank_limit or bank)):
            raise ConfigError(problem)  # before the run writes anything
        exits, exit_size = self.criterion.exit_spec
        model = build_model(
            cfg.model, channels, self.augment.out_size, self.criterion.requires, exits, exit_size
        )
        self.mixer = self.criterion.mixer
        if rt.world_size > 1 and cfg.model.sync_bn:
            model = convert_sync_batchnorm(model, rt.device)
        self.cuda = rt.device.type == "cuda"
        self.channels_last = use_channels_last(cfg.memory_format, rt.device)
        self.model = model.to(
            rt.device,
            memory_format=torch.channels_last if self.channels_last else torch.preserve_format,
        )
        online: torch.nn.Module = self.model.online
        if rt.world_size > 1:
            ids = [rt.device.index] if self.cuda else None
            online = torch.nn.parallel.DistributedDataParallel(online, device_ids=ids)
        self.online = torch.compile(online) if cfg.compile else online
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and self.cuda)
        self.evaluator = Evaluator(
            cfg.eval, splits, self.augment.plain, rt.device, self.autocast, cfg.seed
        )

        b = cfg.data.batch_size // rt.world_size
        self.rows = slice(rt.rank * b, (rt.rank + 1) * b)  # this rank's rows of a global batch
        self.optimizer = build_optimizer(
            cfg.optim, [self.model.online, self.criterion], cfg.data.batch_size
        )
        self.lr, self.ema = curves(cfg, self.batches.steps_per_epoch)  # (steps,) each
        self.epoch, self.step, self.history = 0, 0, []

    # ---- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "criterion": self.criterion.state_dict(),
            "history": self.history,
            "config": self.cfg.to_flat(),
            "run": self.name,
            "lineage": self.values.lineage,
            "encoder": self.encoder_info(),  # what `raysl export` needs without the data
            # tensors and plain data only: the file must load with torch.load(weights_only=True)
            "rng": rng_state(self.cuda),
        }

    def encoder_info(self) -> dict[str, Any]:
        """The backbone's input: channels, side, the eval view's size and normalisation."""
        return encoder_info(self.splits, self.augment)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's state; refused (ConfigError) before anything changes
        when the config differs or the state does not fit this model."""
        check_resumable(state["config"], self.cfg.to_flat(), mutable=self.values.mutable)
        load_modules(state, self.model, self.optimizer, self.criterion)
        self.values.restored(state, self.name)
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        set_rng_state(state["rng"], self.cuda)

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, reporter: Reporter) -> dict[str, float]:
        cfg = self.cfg
        reporter.start(
            RunInfo(
                name=self.name,
                epochs=cfg.epochs,
                start_epoch=self.epoch,
                steps_per_epoch=self.batches.steps_per_epoch,
                global_batch=cfg.data.batch_size,
                world_size=self.rt.world_size,
                device=str(self.rt.device),
                train_size=self.feed.train_size or self.num_samples,
                data=self.feed.source,
                val_size=len(self.splits.val.images),
                parameters=sum(
                    p.numel() for p in self.model.online.parameters() if p.requires_grad
                ),
                terms=tuple(self.criterion.terms),
                out_dir=str(self.checkpoint_dir) if self.checkpoint_dir else None,
            )
        )
        while self.epoch < cfg.epochs:
            apply(self, self.values.due(self.epoch))  # `schedule:` values from this epoch on
            self.values.record(self.epoch, self.name)
            metrics = self.train_epoch(reporter)
            metrics.update(self.values.metrics())
            last = self.epoch == cfg.epochs
            if last or self.epoch % cfg.eval.every == 0:
                metrics.update(self.evaluator.knn(self.model.backbone, "val"))
            self.history.append(metrics)
            checkpoint = None
            if (
                self.checkpoint_dir is not None
                and (last or self.epoch % cfg.checkpoint.every == 0)
                and self.rt.rank == 0
            ):
                checkpoint = save_checkpoint(
                    self.checkpoint_dir,
                    self.epoch,
                    self.state(),
                    cfg.checkpoint.keep,
                    {
                        "metrics": metrics,
                        "config": cfg.to_flat(),
                        "run": self.name,
                        "lineage": self.values.lineage,
                        "history": self.history,
                        "threads": torch.get_num_threads(),  # what a bit-exact replay needs
                    },
                )
            # seconds inside fit() so far (data, setup, epochs, evaluation, checkpoints)
            metrics["time/elapsed"] = time.perf_counter() - self.started
            # what it cost so far: those seconds x devices held (GPUs, else CPU cores) / 3600
            metrics["cost/device_hours"] = metrics["time/elapsed"] * self.rt.devices_held() / 3600
            reporter.epoch(metrics, checkpoint)
        summary = {
            **(self.history[-1] if self.history else {}),
            **self.evaluator.final(self.model.backbone),
        }
        reporter.finish(summary)
        return summary

    def train_epoch(self, reporter: Reporter) -> dict[str, float]:
        cfg, rt = self.cfg, self.rt
        steps = self.batches.steps_per_epoch
        names = ["train/loss", *(f"train/loss/{t}" for t in self.criterion.terms)]
        epoch_sum = torch.zeros(len(names), device=rt.device, dtype=torch.float64)
        window_sum, window_n = torch.zeros_like(epoch_sum), 0
        self.model.train()
        self.evaluator.forget()  # features of the weights before this epoch
        started = time.perf_counter()
        for i, batch in enumerate(self.batches.epoch(self.epoch)):
            for group in self.optimizer.param_groups:
                group["lr"] = float(self.lr[self.step])
            key = step_seed(cfg.seed, self.epoch, i)
            # augmentation drawn for the whole global batch, then this rank's rows
            params = self.augment.sample(cfg.data.batch_size, torch.Generator().manual_seed(key))
            loss, parts = train_step(
                self, batch, params.select(self.rows), key, self.epoch + i / steps
            )
            values = torch.stack([loss.detach(), *(v.detach() for v in parts.values())]).double()
            epoch_sum += values
            window_sum += values
            window_n += 1
            self.model.update_target(float(self.ema[self.step]))
            self.step += 1
            if window_n == cfg.log_every or i == steps - 1:
                mean = distributed.all_reduce_mean(window_sum / window_n)
                check_finite(mean, names, self.epoch, i)
                reporter.step(
                    self.epoch,
                    i,
                    {**dict(zip(names, mean.tolist())), "lr": float(self.lr[self.step - 1])},
                )
                window_sum.zero_()
                window_n = 0
        if self.cuda:
            torch.cuda.synchronize(rt.device)
        elapsed = time.perf_counter() - started
        self.epoch += 1
        means = distributed.all_reduce_mean(epoch_sum / steps)
        metrics = {"epoch": float(self.epoch), **dict(zip(names, means.tolist()))}
        metrics["lr"] = float(self.lr[self.step - 1])
        metrics["train/throughput"] = steps * cfg.data.batch_size / elapsed  # images/s, all workers
        metrics["train/epoch_time"] = elapsed
        for term, schedule in self.criterion.schedules.items():
            if schedule.ramp_from is not None:
                metrics[f"train/weight/{term}"] = schedule(float(self.epoch))
        return metrics
