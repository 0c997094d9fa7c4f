"""Search spaces: a study file is a run file plus `search:` (dotted config key -> one
distribution) and `tune:` (metric, trials, resources, scheduler). No Ray import here.

```yaml
search:
  optim.lr: {loguniform: [0.05, 1.0]}
  model.width: {int: [8, 32], log: true}          # int: optional log, step
  loss.supcon.weight: {choice: [0.0, 0.5, 1.0]}
  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: "loss.supcon.weight > 0"}
tune:
  metric: val/knn_top1                            # never test/*; or [val/knn_top1, cost/device_hours]
  mode: max                                       # or [max, min]: a multi-objective study
  num_samples: 8
  max_concurrent: auto                            # or an integer
  resources: {cpu: 1, gpu: 0, workers: 1}        # per worker; workers > 1 = Ray Train
  scheduler: {asha: {grace_period: 2, reduction_factor: 3}}   # epochs; or none
  seed: 0
  time_budget_s: null
  startup_trials: 4
  sampler: tpe                                    # or random
  max_failures: 0                                 # retries of a trial (from its checkpoint)
  config: {epochs: 25}                            # base-config overrides for the trials only
  baseline: true                                  # trial 0 = the base config
  finalists: {top: 3, seeds: 2, baseline: true}   # default null (raysl.search.study_options)
```

`load_search_spec` checks all of it before anything starts (`raysl.search.load`);
`SearchSpec.sample` is the Optuna define-by-run function and `SearchSpec.config_for` the
trial's validated `Config` (`raysl.search.spec`).
"""

from raysl.search.load import EPOCH_METRICS, load_search_spec
from raysl.search.schema import config_key_problem, config_leaves
from raysl.search.spec import (
    KINDS,
    OPS,
    Asha,
    Condition,
    Finalists,
    Param,
    Resources,
    SearchSpec,
    TuneSettings,
    parse_condition,
)

__all__ = [
    "EPOCH_METRICS",
    "KINDS",
    "OPS",
    "Asha",
    "Condition",
    "Finalists",
    "Param",
    "Resources",
    "SearchSpec",
    "TuneSettings",
    "config_key_problem",
    "config_leaves",
    "load_search_spec",
    "parse_condition",
]
