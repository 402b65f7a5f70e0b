"""Federated tasks: datasets with their text format, evaluation metric and partitioning.

``get_task("bbcnews")`` (topic classification, accuracy) and ``get_task("chatterbot")``
(question answering, perplexity); :mod:`models.tasks.partition` deals a task's training
examples to devices. Importing this package registers every task: a new one is a file with a
``@register``-ed subclass of :class:`~models.tasks.base.Task` and one import line below.
"""

from models.tasks.base import Example, Task, UnknownTaskError, get_task, register, task_names
from models.tasks import bbcnews  # noqa: F401  (registers "bbcnews")
from models.tasks import chatterbot  # noqa: F401  (registers "chatterbot")
from models.tasks.generative import GenerativeTask, TextFileTask
from models.tasks.partition import PartitionSpec, label_histogram, partition, shard

__all__ = ["Example", "Task", "GenerativeTask", "TextFileTask", "UnknownTaskError", "get_task", "register", "task_names", "PartitionSpec",
           "label_histogram", "partition", "shard"]
