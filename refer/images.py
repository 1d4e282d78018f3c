"""Where a referred image is on disk: the REFER layout, or a COCO 2017 folder in its place.

RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO name their images after MS-COCO train2014
(`COCO_train2014_000000581857.jpg`); every train2014 image is also in COCO 2017's `train2017/`
as `000000581857.jpg`. Many people have only the 2017 folders, so when the 2014 file is absent the
image is read from a `train2017/` folder: the one given by `--coco2017-dir`, else the first that
exists of `<root>/images/mscoco/images/train2017`, `<root>/images/train2017`, `<root>/train2017`.
"""
import os
import re

COCO_TRAIN2014_NAME = re.compile(r"COCO_train2014_(\d{12})\.jpg")
COCO2017_CANDIDATES = (("images", "mscoco", "images", "train2017"), ("images", "train2017"), ("train2017",))


def find_coco2017_dir(data_root, given=None):
    """The train2017 folder to fall back to: `given` (must exist), else the first candidate under `data_root`."""
    if given:
        if not os.path.isdir(given):
            raise FileNotFoundError(f"--coco2017-dir '{given}' is not a directory; pass the folder holding COCO 2017's "
                                    "train2017 images (000000XXXXXX.jpg).")
        return given
    for parts in COCO2017_CANDIDATES:
        candidate = os.path.join(data_root, *parts)
        if os.path.isdir(candidate):
            return candidate
    return None


def coco2017_name(file_name):
    """'COCO_train2014_000000581857.jpg' -> '000000581857.jpg' (None for other names)."""
    match = COCO_TRAIN2014_NAME.fullmatch(os.path.basename(file_name))
    return f"{match.group(1)}.jpg" if match else None


def resolve_image_path(image_dir, file_name, coco2017_dir=None):
    """The existing path of `file_name`; a FileNotFoundError naming every place looked at otherwise."""
    primary = os.path.join(image_dir, file_name)
    if os.path.isfile(primary):
        return primary
    looked = [primary]
    name_2017 = coco2017_name(file_name)
    if coco2017_dir and name_2017:
        fallback = os.path.join(coco2017_dir, name_2017)
        if os.path.isfile(fallback):
            return fallback
        looked.append(fallback)
    raise FileNotFoundError(f"Image file not found: {' nor '.join(repr(p) for p in looked)}.")
