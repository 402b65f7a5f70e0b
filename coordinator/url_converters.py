"""URL converters: a row id in a path is an integer a database column can hold.

Werkzeug's ``int`` converter takes any number of digits, and an id beyond the column's range
reached the database (SQLite: ``OverflowError``, a 500). ``<id:...>`` matches 0..2^31-1, the
range of an ``integer`` primary key on PostgreSQL; anything larger is no row, so no route: 404.
"""

from __future__ import annotations

from werkzeug.routing import IntegerConverter

from coordinator.fields import INT32_MAX


class RowIdConverter(IntegerConverter):
    def __init__(self, url_map, *args, **kwargs):
        kwargs.setdefault("max", INT32_MAX)
        super().__init__(url_map, *args, **kwargs)


def register_converters(app) -> None:
    app.url_map.converters["id"] = RowIdConverter
