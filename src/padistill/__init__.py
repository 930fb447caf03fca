"""padistill: dataset distillation with prioritized alignment (PAD) and its baselines.

Data flow (one module per stage):
    data -> scores -> filters -> experts -> match -> distill -> evaluate -> artifacts/report
"""

__version__ = "0.1.0"
