r"""Box formats and IoU-family geometry, shared by the box losses and the label assigners.

**Formats** (the last dimension of a box tensor):

========== ========================================== ==================================
fmt        values                                     note
========== ========================================== ==================================
``xyxy``   x1, y1, x2, y2                             corners; Pascal VOC, torchvision
``xywh``   x1, y1, w, h                               top-left corner and size (COCO)
``cxcywh`` cx, cy, w, h                               centre and size (YOLO, DETR)
``xywhr``  cx, cy, w, h, angle                        rotated, **centre** and angle in
                                                      radians (Ultralytics OBB); alias
                                                      ``cxcywhr``
``xyxyxyxy`` x1, y1, ..., x4, y4                      the 4 corners of a rotated box
``xyzxyz`` x1, y1, z1, x2, y2, z2                     3-D axis-aligned (MONAI)
``xyzwlhr`` x, y, z, w, l, h, yaw                      3-D with yaw: **centre**, width,
                                                      length along the heading, height,
                                                      yaw about +z (nuScenes' ``wlh``)
========== ========================================== ==================================

torchvision's rotated ``XYWHR`` is *not* ``xywhr`` here: it starts at a corner and takes degrees.
A rotated box ``(cx, cy, w, h, a)`` has its ``w`` side along the direction
:math:`(\cos a, \sin a)`; its corners, in order, are the local points :math:`(-w/2, -h/2)`,
:math:`(w/2, -h/2)`, :math:`(w/2, h/2)`, :math:`(-w/2, h/2)` rotated by ``a`` and moved to the
centre (for ``a = 0`` and image axes: top-left, top-right, bottom-right, bottom-left).

**Pairwise and aligned.** :func:`box_iou` compares every box of ``boxes1`` ``(..., N, 4)`` with
every box of ``boxes2`` ``(..., M, 4)`` (``aligned=False``, result ``(..., N, M)``, what an assigner
needs) or box ``i`` with box ``i`` (``aligned=True``, result ``(..., N)``, what a loss needs), from
the same code: the pairwise form only inserts the two broadcast dimensions.

**Degenerate boxes and eps.** A zero width or height is valid; ``x2 < x1`` is an error (a value
check, see :func:`losskit.set_checks`). Every ratio whose numerator vanishes with its denominator
(the IoU of two zero-area boxes, the centre-distance term of two coincident points, the angle of
two coincident centres) is computed by a guarded division: a denominator at most ``eps`` gives
the ratio 0 with a zero gradient, any larger one gives the exact ratio. So values for real boxes
do not depend on ``eps`` at all (torchvision and Ultralytics add ``eps`` to the denominators,
which moves results by about ``eps / area``), and degenerate pairs give finite values and finite
(zero) gradients instead of ``0 / 0``. ``eps`` is also the floor of a logarithm's argument
(:func:`losskit.iou_loss` with ``mode="log"``). Default (:func:`default_eps`): ``1e-7`` for float32
and float64 (the torchvision/Ultralytics value) and ``1e-6`` for float16 and bfloat16. Half
inputs are computed in float32, so the larger value is not needed to represent ``eps`` (the
yolov5 failure of an fp16 ``1e-9`` that underflows cannot happen here). It is about what half
inputs can resolve: float16's step near 1 is 9.8e-4 (bfloat16's 7.8e-3), so a box one step wide
and high has an area of about 1e-6; pairs below that are rounding noise and count as degenerate
instead of producing ratios of noise. The log-IoU floor then caps the loss at 13.8 (mmdetection's
``eps=1e-6``) instead of 16.1.

**Dtypes.** Half, bfloat16 and integer boxes are computed in float32; float32 and float64 as they
are. Results have the input's floating dtype (float32 for integer boxes).
"""

# One job per module: _checks (format tables, eps and dtype policy, box checks), formats
# (conversion, areas, distances from points), axis_aligned (the IoU family), gaussian (ProbIoU),
# rotated (polygon IoU of rotated boxes and 3-D boxes with yaw). The names in __all__ are the
# public ones; the ones imported "as" themselves are what the losses and the detection code use.
from losskit.boxes._checks import _WIDTH as _WIDTH
from losskit.boxes._checks import AXIS_ALIGNED_FORMATS, ROTATED_FORMATS, check_boxes, default_eps
from losskit.boxes._checks import _check_fmt as _check_fmt
from losskit.boxes._checks import _resolve_eps as _resolve_eps
from losskit.boxes.axis_aligned import IOU_KINDS, box_iou, box_iou_3d
from losskit.boxes.axis_aligned import IOU_KINDS_3D as IOU_KINDS_3D
from losskit.boxes.axis_aligned import Kind as Kind
from losskit.boxes.axis_aligned import PairGeometry as PairGeometry
from losskit.boxes.axis_aligned import ciou_alpha as ciou_alpha
from losskit.boxes.axis_aligned import iou_family as iou_family
from losskit.boxes.axis_aligned import iou_family_loss as iou_family_loss
from losskit.boxes.axis_aligned import pair_geometry as pair_geometry
from losskit.boxes.axis_aligned import ratio as ratio
from losskit.boxes.axis_aligned import safe_sqrt as safe_sqrt
from losskit.boxes.formats import _to_xyxy as _to_xyxy
from losskit.boxes.formats import box_area, box_convert, box_to_distance, distance_to_box
from losskit.boxes.gaussian import PROBIOU_BOUND as PROBIOU_BOUND
from losskit.boxes.gaussian import bhattacharyya as bhattacharyya
from losskit.boxes.gaussian import hellinger as hellinger
from losskit.boxes.gaussian import probiou
from losskit.boxes.rotated import ROTATED_IOU_KINDS as ROTATED_IOU_KINDS
from losskit.boxes.rotated import (
    kitti_to_xyzwlhr,
    normalize_angle,
    nuscenes_to_xyzwlhr,
    rotated_box_iou,
    rotated_box_iou_3d,
)
from losskit.boxes.rotated import rotated_iou_terms as rotated_iou_terms

__all__ = [
    "AXIS_ALIGNED_FORMATS",
    "IOU_KINDS",
    "ROTATED_FORMATS",
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_3d",
    "box_to_distance",
    "check_boxes",
    "default_eps",
    "distance_to_box",
    "kitti_to_xyzwlhr",
    "normalize_angle",
    "nuscenes_to_xyzwlhr",
    "probiou",
    "rotated_box_iou",
    "rotated_box_iou_3d",
]
