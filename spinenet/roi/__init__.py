"""Detector-free ROI cropping (Šušteršič 2022): disc contours → boxes + margin → crop → 64×64 → CLAHE.

Steps, as the paper describes them and where it leaves a choice, what spinenet does:

1. **Boxes from a mask** (:func:`~spinenet.roi.geometry.disc_boxes`): ``cv2.findContours`` on the disc class
   of a ground-truth or predicted mask; one box per outer contour, boxes half-open (``image[y0:y1, x0:x1]``),
   sorted top → bottom.
2. **Margin** (:func:`~spinenet.roi.geometry.enlarge_box`): the paper enlarges the box by "10 %" without saying
   of what. Here the box's width and height each grow by ``margin`` (each side moves out by ``margin/2`` of the
   width or height; the area grows by about 21 % for 10 %), rounded outwards to whole pixels and clipped at the
   image edge (never padded, so a crop at the edge is smaller than the enlarged box).
3. **Crop, resize, enhance** (:func:`~spinenet.roi.geometry.crop_roi`): the crop is resized to ``size``
   (``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_LINEAR`` when enlarging) and then enhanced with CLAHE
   (clip 2.0, 4×4 tiles). CLAHE runs after the resize so that its tiles cover the same share of every disc
   (16×16 pixels at 64×64).
4. **Levels on sagittal slices** (:func:`~spinenet.roi.levels.assign_levels`): counted bottom-up, "its order
   above the sacrum": the lowest disc is L5-S1, then L4-L5, L3-L4, L2-L3, L1-L2, then T12-L1, T11-T12, …
   T1-T2; further ones are ``disc_k`` (k counted from the bottom, 1 = lowest). This assumes the lowest disc in
   the mask is L5-S1 (the sacrum in view, L5-S1 segmented, no transitional vertebra); a missed L5-S1 shifts
   every level.
5. **Data sets**: :func:`~spinenet.roi.mask_crops.crop_dataset` (from a manifest with masks or a segmenter,
   :mod:`spinenet.roi.inference`) and :func:`~spinenet.roi.box_crops.crops_from_box_csv` (Al-Ajaj 2024's
   bounding-box CSV) write ``images/*.png``, ``manifest.csv``, ``missing.csv`` (images without any disc or
   box: reported, never silently dropped) and ``summary.json``. An image or mask that cannot be used
   (missing, empty, truncated, not an image, a mask of another size or with unmapped values) fails its row
   only: listed in ``summary.json`` (``failed``: line, file, status, reason), the other rows are cropped. The
   crops are written into a hidden sibling of ``out_dir`` and moved in when complete
   (:mod:`spinenet.roi.writers`), so a run that cannot read any input leaves no ``out_dir`` (and
   ``--overwrite`` keeps the earlier crops). :mod:`spinenet.roi.phantom` makes the phantom's disc crops.

The command line, ``spinenet roi``, is :mod:`spinenet.cli.roi`.
"""

from __future__ import annotations

from spinenet.roi.box_crops import BOX_COLUMNS, crops_from_box_csv
from spinenet.roi.geometry import (
    DEFAULT_CLAHE,
    Box,
    crop_roi,
    disc_boxes,
    enlarge_box,
    square_box,
)
from spinenet.roi.inference import segmenter_mask_source
from spinenet.roi.levels import (
    LUMBAR_LEVELS,
    THORACIC_LEVELS,
    assign_levels,
    level_names,
    off_the_spine,
    plausible_sagittal_discs,
)
from spinenet.roi.mask_crops import VIEWS, MaskSource, crop_dataset
from spinenet.roi.phantom import phantom_crops, phantom_crops_on_first_use

__all__ = [
    "BOX_COLUMNS",
    "Box",
    "DEFAULT_CLAHE",
    "LUMBAR_LEVELS",
    "MaskSource",
    "THORACIC_LEVELS",
    "VIEWS",
    "assign_levels",
    "crop_dataset",
    "crop_roi",
    "crops_from_box_csv",
    "disc_boxes",
    "enlarge_box",
    "level_names",
    "off_the_spine",
    "phantom_crops",
    "phantom_crops_on_first_use",
    "plausible_sagittal_discs",
    "segmenter_mask_source",
    "square_box",
]
