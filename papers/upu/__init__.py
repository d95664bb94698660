"""upu: PNU-Repro's own table comparing positive-unlabelled risks (uPU, nnPU, VPU) and the supervised PN
oracle on one task. Its methods (`upu`, `nnpu`, `vpu`, `pn_oracle`) and data module (`pu_binary`) live in
common/; this package holds the README."""
