"""Expert trajectories: training (scheduled, SGD or GSAM), storage, and replay-buffer interop.

    run_experts(cfg, prepared, out, scores_dir=)   the `padistill experts` stage (resumable, torchrun scale-out)
    GSAM                                           the flat-trajectory optimiser of FTD / DATM / PAD (spec §1.2)
    ExpertStore(folder)                            lazy (mmap) reader of start/target checkpoint pairs
    import_replay_buffers / export_replay_buffers  MTT / DATM / PAD replay_buffer_<n>.pt files (spec §1.6)
"""

from padistill.experts.gsam import GSAM
from padistill.experts.storage import ExpertStore, expert_path, save_expert
from padistill.experts.train import experts_settings, make_optimizer, run_experts, train_expert

__all__ = [
    "GSAM", "ExpertStore", "expert_path", "experts_settings", "make_optimizer", "run_experts",
    "save_expert", "train_expert",
]
