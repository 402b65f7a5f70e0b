"""Who trains in a round, and what: client selectors and tier configurators, one file each.

- Selectors (which eligible devices get a round's places): the base and registry are
  ``selector.py``, members such as ``first_come.py`` are registered by the import lines below,
  looked up with ``get_selector("first_come")``.
- Tier configurators (which sub-tier a device trains): the base and registry are
  ``configurator.py``, members ``uniform.py``, ``legend.py``, ``fedspine.py``, ``hetlora.py`` are registered
  there on the first lookup (they load torch, which importing this package must not), looked
  up with ``configurator.get_configurator("legend", options)``. Their shared parts:
  ``options.py`` (option checks), :mod:`models.tier_algebra`, :mod:`fleet.task_cost`.
"""

from coordinator.scheduling.selector import Requirements, Selector, get_selector, register, selector_names
from coordinator.scheduling import first_come  # noqa: F401  (registers "first_come")

DEFAULT_SELECTOR = "first_come"

__all__ = ["DEFAULT_SELECTOR", "Requirements", "Selector", "get_selector", "register", "selector_names"]
