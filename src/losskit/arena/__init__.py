"""The arena: train small models with different losses side by side, and report.

``losskit compare`` on the command line; :func:`compare` from Python. A :class:`Task` bundles a
data set, a model and the validation metrics; :func:`register_task` adds one, and ``compare``
also takes a ``Task`` built around your own data and model.
"""

from losskit.arena.runner import compare
from losskit.arena.tasks import TASKS, Task, get_task, register_task

__all__ = ["TASKS", "Task", "compare", "get_task", "register_task"]
