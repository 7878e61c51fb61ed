"""Fine-tuning tasks: features, the head each trains, the loss on the (sum, count) contract, predictions
and metrics (base.py), one module per task, and the evaluation of a split (run.py). The registry of task
names, with the prompting paradigms beside them, is plmkit.recipes.tasks.
"""

from plmkit.evaluate.tasks.config import TASK_NAMES, TaskConfig

__all__ = ["TASK_NAMES", "TaskConfig"]
