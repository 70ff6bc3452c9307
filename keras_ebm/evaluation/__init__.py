"""Evaluation of the generative regimes:

- `chains`: what `evaluate.py` runs for shortrun, prior and longrun (FID and
  realism along one trajectory of Langevin chains, or the toy2d steady
  state) and the EBM's SavedModel export;
- `fid`: FID backbones, data statistics with a cache, FID along chains;
- `metrics`: the Frechet distance;
- `steady_state`: toy2d, the exact grid steady state against the truth.
"""
