"""SRe2L (Yin et al., "Squeeze, Recover and Relabel"), with PAD's FIEX applied (paper §4.4, Table 5c).

Stages (each an ordinary stage folder, see docs/methods/sre2l.md):
    squeeze   train a batch-norm teacher on the real data (FIEX: on the difficulty-scheduled data)
    recover   synthesise images from the teacher alone (cross-entropy + BN-statistics matching)
    relabel   the evaluation protocol `eval.protocol: sre2l` (evaluate/sre2l.py)
"""

from padistill.sre2l.recover import run_recover
from padistill.sre2l.squeeze import run_squeeze

__all__ = ["run_recover", "run_squeeze"]
