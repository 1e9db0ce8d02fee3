"""Experiments users can run on a CPU with the bundled digits: `warmup_sweep` and its reports,
`batch_growth_experiment`, and `digits_lr_range_test` (the LR range test on the same CNN).

The experiments need scikit-learn (the digits) and, for plots, matplotlib: both are imported only
when used, so `import keras_trainx.experiments` works without them.
"""

from keras_trainx.experiments.batch_growth import (
    GROWTH_FULL,
    GROWTH_QUICK,
    batch_growth_experiment,
    format_growth_table,
    growth_plan,
    plot_growth,
    write_growth_csv,
)
from keras_trainx.experiments.digits import build_cnn, load_digits_standardized
from keras_trainx.experiments.lr_range import DIGITS_SWEEP, digits_lr_range_test
from keras_trainx.experiments.report import (
    COLLAPSE_BELOW,
    format_table,
    plot_sweep,
    summarize,
    write_csv,
)
from keras_trainx.experiments.warmup import (
    FULL,
    QUICK,
    check_warmup_sweep,
    warmup_schedule,
    warmup_sweep,
)

__all__ = [
    "GROWTH_FULL", "GROWTH_QUICK", "batch_growth_experiment", "format_growth_table", "growth_plan", "plot_growth",
    "write_growth_csv", "DIGITS_SWEEP", "digits_lr_range_test",
    "COLLAPSE_BELOW", "FULL", "QUICK", "build_cnn", "check_warmup_sweep", "format_table", "load_digits_standardized",
    "plot_sweep", "summarize", "warmup_schedule", "warmup_sweep", "write_csv",
]
