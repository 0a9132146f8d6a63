"""Detection training: anchor points, DFL decoding, the task-aligned assigner and the YOLO criterion.

:class:`YOLOLoss` is the whole YOLOv8/YOLO11/YOLO26 training loss as one module; its parts
(:func:`make_anchors`, :func:`dfl_decode`, :class:`TaskAlignedAssigner`) work on their own for
other anchor-free detectors. The dense-detection losses themselves (varifocal, quality focal,
distribution focal) are in :mod:`losskit.functional`.
"""

from losskit.detection.anchors import AnchorGrid, bbox2dist, dfl_decode, dist2bbox, make_anchors
from losskit.detection.assigner import Assignment, CandidatePairs, TaskAlignedAssigner
from losskit.detection.obb import YOLOOBBLoss, rotated_box_to_distance, rotated_distance_to_box
from losskit.detection.pose import YOLOPoseLoss
from losskit.detection.rotated_assigner import RotatedTaskAlignedAssigner, rotated_corners
from losskit.detection.segment import YOLOSegmentLoss
from losskit.detection.yolo import DetectionLossResult, YOLOLoss, one_to_many_weight

__all__ = [
    "AnchorGrid",
    "Assignment",
    "CandidatePairs",
    "DetectionLossResult",
    "RotatedTaskAlignedAssigner",
    "TaskAlignedAssigner",
    "YOLOLoss",
    "YOLOOBBLoss",
    "YOLOPoseLoss",
    "YOLOSegmentLoss",
    "bbox2dist",
    "dfl_decode",
    "dist2bbox",
    "make_anchors",
    "one_to_many_weight",
    "rotated_box_to_distance",
    "rotated_corners",
    "rotated_distance_to_box",
]
