"""The one typed config: data, augmentation, model, loss terms, optimizer, evaluation, checkpoints.

Every leaf has one dotted key (`optim.lr`, `loss.infonce.temperature`). The same key is used
by `--set` on the command line, by `search:` in search-space files, as the Tune parameter
name and as the MLflow param. Unknown keys, wrong types and out-of-range values are errors
that name the file, the line and what is allowed (`load_run_file`); the validators and those
messages are in `raysl.config_checks`.

Units: `optim.lr` is per 256 images of the *global* batch; epochs and `*_epochs` are epochs
of the training split; probabilities are in [0, 1].
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from raysl.config_checks import (
    a_fraction,
    a_path,
    no_bool,
    one_k_or_a_list,
    problem,
    ramp_in_order,
    run_problems,
    some_weight,
)
from raysl.errors import ConfigError
from raysl.losses import LOSSES
from raysl.losses.base import CONTEXT
from raysl.yamlio import flatten, merge, unflatten

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
MAX_SIDE = 1024  # pixels: image sides above it exhaust memory long before they train
MIN_SIDE = 8  # pixels: the smallest source (digits) is 8x8; a 1-pixel side fails in the crop
ImageSide = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]

SOURCES = (
    "synthetic",
    "digits",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "stl10",
    "imagefolder",
    "parquet",
)
Source = Literal[
    "synthetic", "digits", "fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder", "parquet"
]


class _Strict(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `.nan` is refused (every float must be finite)
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )
    _check_no_bool = field_validator("*", mode="before")(no_bool)


class SyntheticConfig(_Strict):
    """Procedural images with class structure (for tests and smoke runs)."""

    num_classes: PositiveInt = 10
    num_samples: PositiveInt = (
        2048  # training images (val is val_fraction of them); test: a quarter
    )
    image_size: Annotated[int, Field(ge=8, le=256)] = 16  # a smoke-test source: small images
    channels: Literal[1, 3] = 3


class DataConfig(_Strict):
    source: Source = "digits"
    root: str | None = None  # data directory; None = the source's default location
    download: bool = False  # let torchvision download cifar10/cifar100/stl10 (needs network)
    batch_size: PositiveInt = 256  # global batch, split evenly over workers
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # held out of train for monitoring
    train_limit: PositiveInt | None = None  # keep only the first N training images
    # a stratified, seeded subset of the training split (after val; before train_limit)
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    image_size: ImageSide | None = None  # resize at load (imagefolder/parquet); None = native
    on_device: Literal["auto", "always", "never"] = "auto"  # keep uint8 images on the GPU
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("train_fraction", mode="before")
    @classmethod
    def _a_fraction(cls, value: Any) -> Any:
        return a_fraction(value)

    @field_validator("root")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        return a_path(value)


class AugmentConfig(_Strict):
    """Batched augmentation on the training device; a preset plus optional overrides.

    Presets (`raysl/augment/presets.py`): simclr, mocov2, byol (asymmetric), weak_strong
    (CMSF: weak target view, strong query view), supcon, crop_flip, none. An override that is
    set applies to every view.
    """

    preset: Literal["simclr", "mocov2", "byol", "weak_strong", "supcon", "crop_flip", "none"] = (
        "simclr"
    )
    views: PositiveInt = 2  # views per image (V)
    size: ImageSide | None = None  # output side in pixels; None = the image side
    crop_min_scale: Annotated[float, Field(gt=0, le=1)] | None = None  # random resized crop
    jitter_strength: NonNegativeFloat | None = None  # multiplies the preset's jitter magnitudes
    jitter_prob: Probability | None = None
    grayscale_prob: Probability | None = None
    blur_prob: Probability | None = None
    solarize_prob: Probability | None = None
    flip_prob: Probability | None = None


class ModelConfig(_Strict):
    backbone: Literal["convnet", "resnet18", "resnet34", "resnet50"] = "convnet"
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # auto: 3x3 stride-1 stem below 100 px
    width: PositiveInt = 32  # convnet: channels of the first stage, doubled per stage
    proj_hidden_dim: PositiveInt = 512
    proj_dim: PositiveInt = 128  # D: the embedding the losses see
    proj_layers: Annotated[int, Field(ge=1, le=4)] = 2
    pred_hidden_dim: PositiveInt = 512  # predictor MLP, built only when a term needs it
    sync_bn: bool = True  # batch-norm statistics over the global batch when distributed
    ema_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.99  # EMA target momentum at step 0
    ema_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: momentum -> 1 at the end


class OptimConfig(_Strict):
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: PositiveFloat = 0.3  # per 256 images of the global batch (see lr_scaling)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # lr x (B/256) or x sqrt(B/256)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # SGD/LARS momentum; AdamW beta1
    weight_decay: NonNegativeFloat = 5e-4  # not applied to biases and norm layers
    warmup_epochs: NonNegativeFloat = 0.0  # linear warm-up from 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: Probability = 0.0  # cosine ends at lr x min_lr_ratio
    lars_trust: PositiveFloat = 0.001  # LARS trust coefficient η


class EvalConfig(_Strict):
    # weighted cosine kNN (Wu et al., 2018); a list reports every k (metrics `*_k<k>`)
    # and the first k is `val/knn_top1`, the metric studies rank by
    knn_k: PositiveInt | list[PositiveInt] = 200
    knn_temperature: PositiveFloat = 0.1
    every: PositiveInt = 1  # epochs between kNN evaluations (the last epoch always)
    bank_limit: PositiveInt | None = None  # at most N training images in the kNN bank
    batch_size: PositiveInt = 1024  # images per forward pass when extracting features
    linear_probe: bool = False  # at the end: linear classifier on frozen features
    probe_epochs: PositiveInt = 100
    probe_lr: PositiveFloat = 0.1  # Adam on standardised features
    test: bool = True  # at the end: kNN (and probe) on the test split, reported, never tuned on

    @field_validator("knn_k", mode="before")
    @classmethod
    def _one_k_or_a_list(cls, value: Any) -> Any:
        return one_k_or_a_list(value)

    @property
    def ks(self) -> tuple[int, ...]:
        """Every k of `knn_k`, in order (the first is the one `*/knn_top1` reports)."""
        return tuple(self.knn_k) if isinstance(self.knn_k, list) else (self.knn_k,)


class CheckpointConfig(_Strict):
    every: PositiveInt = 1  # epochs between checkpoints (the last epoch always)
    keep: PositiveInt = 2  # newest checkpoints kept on disk


def _term_config(name: str, cls: type) -> type[BaseModel]:
    """A strict model for `loss.<name>` built from the term's constructor signature."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {
        "weight": (NonNegativeFloat, 1.0),
        "ramp_from": (NonNegativeFloat | None, None),
        "ramp_start": (NonNegativeFloat, 0.0),
        "ramp_end": (NonNegativeFloat, 0.0),
    }
    for param in inspect.signature(cls).parameters.values():
        if param.name in CONTEXT:
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    return create_model(  # type: ignore[call-overload]
        _term_class_name(name),
        __config__=_Strict.model_config,
        __module__=__name__,
        __doc__=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None,
        __validators__={
            "check_ramp": model_validator(mode="after")(ramp_in_order),
            "check_no_bool": field_validator("*", mode="before")(no_bool),
        },
        **fields,
    )


def _term_class_name(term: str) -> str:
    return "".join(part.title() for part in term.split("_")) + "TermConfig"


TERM_CONFIGS: dict[str, type[BaseModel]] = {
    name: _term_config(name, cls) for name, cls in LOSSES.items()
}
# Module attributes, so configs pickle by reference (Ray pickles the search space with them).
globals().update({model.__name__: model for model in TERM_CONFIGS.values()})


LossConfig: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "LossConfig",
    __config__=_Strict.model_config,
    __module__=__name__,
    __validators__={"check_some_weight": model_validator(mode="after")(some_weight)},
    **{name: (model | None, None) for name, model in TERM_CONFIGS.items()},
)


class Config(_Strict):
    # numpy, torch and Python take seeds in [0, 2^64): anything else fails when the run starts
    seed: Annotated[int, Field(ge=0, lt=2**64)] = 0
    epochs: PositiveInt = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False  # torch.compile the online network
    # auto: NHWC on CUDA, NCHW on CPU (raysl.runtime.use_channels_last says why)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    log_every: PositiveInt = 20  # steps between progress updates and step records
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = Field(default_factory=lambda: LossConfig(infonce={}))  # type: ignore[valid-type]
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # mutable key -> [[epoch, value], ...], piecewise constant from each epoch on (`raysl.mutable`)
    schedule: dict[str, list[tuple[int, Any]]] = {}

    @field_validator("schedule", mode="before")
    @classmethod
    def _a_schedule(cls, value: Any, info: ValidationInfo) -> Any:
        from raysl.mutable import check_schedule

        return check_schedule(value, info.data, cls)

    # ---- dotted keys --------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """`{"optim.lr": 0.3, "loss.infonce.temperature": 0.2, ...}`; absent terms and None left out."""
        flat = flatten(self.model_dump(exclude_none=True))
        return {k: v for k, v in flat.items() if k != "schedule"}  # an empty schedule: none

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], where: str = "--set") -> Config:
        return validate(unflatten(flat), where=where)

    def override(self, flat: Mapping[str, Any], where: str = "--set") -> Config:
        """A copy with dotted overrides applied, validated; errors name `where`."""
        if not flat:
            return self
        return validate(merge(self.model_dump(exclude_none=True), unflatten(flat)), where=where)

    def active_terms(self) -> dict[str, dict[str, Any]]:
        """`cfg.loss` as a plain dict of the terms that are present."""
        return {k: v for k, v in self.loss.model_dump().items() if v is not None}


# ---- validation with messages people can act on ---------------------------------------
def validate(
    raw: Mapping[str, Any],
    where: str = "",
    lines: Mapping[str, int] | None = None,
    prefix: str = "",
) -> Config:
    """Validate a nested config dict; every error names the dotted key, `where` and the line."""
    try:
        cfg = Config.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [problem(error, where, lines or {}, prefix, Config) for error in exc.errors()]
        raise ConfigError(problems) from None
    if problems := run_problems(cfg, where, lines, prefix):  # terms that cannot learn here
        raise ConfigError(problems)
    return cfg


def config_defaults() -> dict[str, Any]:
    """The default of every dotted key, the keys of every loss term included (None left out)."""
    flat = Config().to_flat()
    for name, model in TERM_CONFIGS.items():
        for key, field in model.model_fields.items():
            if not field.is_required() and field.default is not None:
                flat[f"loss.{name}.{key}"] = field.default
    return flat
