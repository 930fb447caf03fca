"""Matchers: the information-embedding signal of each method.

- `trajectory`: MTT/DATM/PAD — unroll a student on the synthetic set from an expert checkpoint and
  match the expert's later checkpoint (bounded-memory exact gradients).
- `gradient`: DC/DSA — match per-class gradients of real and synthetic batches.
- `distribution`: DM — match per-class mean embeddings.
Each takes an optional FIEM selection from `padistill.filters`; none gives the unfiltered baseline.
"""
