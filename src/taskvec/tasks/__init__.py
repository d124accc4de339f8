"""Task definitions, built-in data, per-tokenizer preparation, sampling and scoring."""

from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import PreparedTask, prepare_task
from taskvec.tasks.registry import ALL_TASKS, EXTRA_TASKS, PAPER_TASKS, builtin_task, load_task_file, load_tasks
from taskvec.tasks.scoring import is_correct

__all__ = [
    "ALL_TASKS",
    "EXTRA_TASKS",
    "PAPER_TASKS",
    "Pair",
    "PreparedTask",
    "Task",
    "builtin_task",
    "is_correct",
    "load_task_file",
    "load_tasks",
    "prepare_task",
]
