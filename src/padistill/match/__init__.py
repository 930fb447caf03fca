"""Matchers: the information-embedding signal of each method.

- `trajectory`: MTT/DATM/PAD — unroll a student on the synthetic set from an expert checkpoint and
  match the expert's later checkpoint (bounded-memory exact gradients).
- `gradient`: DC/DSA — match per-class gradients of real and synthetic batches.
- `distribution`: DM — match per-class mean embeddings (or PAD's kept layer-output channels).
- `pools`: the per-class real-image pools DC and DM draw from (FIEX pruning decided by the distill loop).
- `losses`: the trajectory distances (classification losses: `padistill.losses`).
The distill loop decides the filters and hands each matcher tensors, a net factory and an optional FIEM
selection from `padistill.filters`; none gives the unfiltered baseline. DC and DM are plain step functions.
"""
