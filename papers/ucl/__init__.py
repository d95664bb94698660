"""ucl: PNU-Repro's own table comparing contrastive objectives (InfoNCE/SimCLR, DCL, HCL, false-negative
masking, SupCon) on one backbone, data pipeline and loss kernel. Its method (`contrastive`), data module
(`multiview`) and losses live in common/ (shared with contrastive papers); this package holds the README."""
