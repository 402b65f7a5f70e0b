"""Aggregation strategies, one file per algorithm, looked up by name (``get_strategy("fedavg")``).

Adding one: write ``coordinator/strategies/<name>.py`` with a ``@register``-ed subclass of
:class:`~coordinator.strategies.base.Strategy` and import it below.
"""

from coordinator.strategies.base import (ClientUpdate, Strategy, TrainedPart, get_strategy, register,
                                         strategy_names)
from coordinator.strategies import fedavg  # noqa: F401  (registers "fedavg")
from coordinator.strategies import fedavgm  # noqa: F401  (registers "fedavgm")
from coordinator.strategies import flexlora  # noqa: F401  (registers "flexlora")
from coordinator.strategies import hetlora  # noqa: F401  (registers "hetlora")
from coordinator.strategies import median  # noqa: F401  (registers "median")
from coordinator.strategies import trimmed_mean  # noqa: F401  (registers "trimmed_mean")
from coordinator.strategies import zero_padding  # noqa: F401  (registers "zero_padding")

__all__ = ["ClientUpdate", "Strategy", "TrainedPart", "get_strategy", "register", "strategy_names"]
