"""Throwaway: snap keeps the x0 estimate in cells where the snapped frame explains it no better than the unmoved
frame (by squared error summed over channels). Usage: python probe_keep.py SCRIPT ARGS... (runs that benchmark)."""
import runpy, sys
import torch
from worldmodel.model import VideoWorldModel

plain = VideoWorldModel.anchor


def anchor(self, last, noisy, t, translations=None):
    snapped = plain(self, last, noisy, t, translations)
    if not (torch.as_tensor(t).ndim == 0 and int(t) == self.config.snap_observe and self.config.snap_start):
        return snapped
    estimate = noisy / self._alpha_sigma(t)[0]
    err_snap = (snapped - estimate).square().sum(dim=1, keepdim=True)
    err_still = (last - estimate).square().sum(dim=1, keepdim=True)
    return torch.where(err_snap < err_still, snapped, estimate)


VideoWorldModel.anchor = anchor
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
