"""Client selection, one file per selector, looked up by name (``get_selector("first_come")``)."""

from coordinator.scheduling.base import Requirements, Selector, get_selector, register, selector_names
from coordinator.scheduling import first_come  # noqa: F401  (registers "first_come")

DEFAULT_SELECTOR = "first_come"

__all__ = ["DEFAULT_SELECTOR", "Requirements", "Selector", "get_selector", "register", "selector_names"]
