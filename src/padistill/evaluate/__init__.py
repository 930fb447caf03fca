"""Evaluation: the paper's protocol over tensors, cross-architecture tables, baselines, KD, the eval stage.

    from padistill.evaluate import evaluate
    res = evaluate(images, labels, lr, net="convnet", num_classes=10, channels=3, im_size=(32, 32),
                   x_test=x_test, y_test=y_test, runs=5)          # 1001 epochs, SGD, DSA, soft CE
    print(res.cell())                                             # '67.40 ± 0.30 (n=5)'

Modules: `protocol` (schedule, one run, n runs, `EvalResult`), `table` (rows x nets), `sets` (random
baseline, KD teacher, model-space check), `api` (`evaluate_set`, `cross_arch`, `train_on_real` over
`Prepared` data), `stage` (`run_eval`: `padistill eval RUN_DIR`).
"""

from padistill.artifacts import find_distill_dir, read_set_config
from padistill.evaluate.api import cross_arch, evaluate_set, net_options, train_on_real
from padistill.evaluate.protocol import (
    EvalResult,
    Protocol,
    decay_epoch,
    evaluate,
    lr_schedule,
    optimizer_starts,
    train_and_test,
)
from padistill.evaluate.sets import EvalSet, check_space, load_teacher, random_subset
from padistill.evaluate.stage import run_eval
from padistill.evaluate.table import EvalTable
from padistill.evaluate.teacher import Teacher
from padistill.losses import kd_loss

__all__ = [
    "EvalResult", "EvalSet", "EvalTable", "Protocol", "Teacher", "check_space", "cross_arch", "decay_epoch",
    "evaluate", "evaluate_set", "find_distill_dir", "kd_loss", "load_teacher", "lr_schedule", "net_options",
    "optimizer_starts", "random_subset", "read_set_config", "run_eval", "train_and_test", "train_on_real",
]
