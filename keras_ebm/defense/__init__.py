"""Adversarial defense by Langevin purification (paper Section 3), apart
from the attacks that measure it:

- `purify`: `DefendedClassifier` (K_def Langevin steps in front of any
  classifier, replicate-averaged logits) and its SavedModel;
- `attack`: PGD with EOT, BPDA or exact gradients through the purification,
  the monotone per-image record, resumable runs;
- `report`: the midrun robustness report (undefended, BPDA+EOT, the
  full-gradient attack, worst case, seeds, the K_def curves);
- `outputs`: what the report writes (CSV, PNG, TensorBoard, the table).
"""
