"""spinenet: lumbar-spine MRI disc-herniation experiments (segmentation, ROI, classification, ensembles)."""

__version__ = "0.1.0"
