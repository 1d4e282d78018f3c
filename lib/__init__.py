"""LAVT model code: multi-modal Swin backbone, PWAM fusion, mask decoder and model builders."""
from .segmentation import LAVT, SWIN_CONFIGS, LAVTOne, build_lavt, lavt, lavt_one

__all__ = ["LAVT", "LAVTOne", "SWIN_CONFIGS", "build_lavt", "lavt", "lavt_one"]
