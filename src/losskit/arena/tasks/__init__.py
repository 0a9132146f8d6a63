"""The arena's tasks: a data set, a model, how to build a loss from a spec, and the validation metrics.

One module per task: ``segmentation`` (the default: tiny lesions), ``classification`` (digits),
``regression`` (diabetes with outliers), ``detection`` (rectangles), ``rl`` (cart-pole), and two
that read your data without Python: ``tabular`` (a CSV or Parquet file) and
``segmentation-folder`` (PNG images and masks). The built-in data sets are generated or ship
offline (scikit-learn's digits and diabetes), so a comparison runs anywhere, with no download.
Metrics come from torchmetrics and detection mAP from faster-coco-eval; pandas and Pillow read
your files. Each is imported when it is needed, so importing this package needs torch alone.
"""

from losskit.arena.tasks import (
    classification,
    detection_obb,
    regression,
    rl,
    segmentation,
    segmentation_folder,
    tabular,
)
from losskit.arena.tasks.base import TASKS, Task, get_task, register_task
from losskit.arena.tasks.detection import (
    SHAPES_CLASSES,
    SHAPES_REG_MAX,
    SHAPES_SIZE,
    SHAPES_STRIDES,
    TinyDetector,
    decode_detections,
    make_shapes,
)
from losskit.arena.tasks.rl import ActorCritic, CartPole
from losskit.arena.tasks.segmentation import LESION_SIZE, TinyUNet, make_lesion_images

__all__ = ["LESION_SIZE", "SHAPES_CLASSES", "SHAPES_REG_MAX", "SHAPES_SIZE", "SHAPES_STRIDES", "TASKS",
           "ActorCritic", "CartPole", "Task", "TinyDetector", "TinyUNet", "classification", "decode_detections",
           "detection_obb",
           "get_task", "make_lesion_images", "make_shapes", "regression", "register_task", "rl", "segmentation",
           "segmentation_folder", "tabular"]
