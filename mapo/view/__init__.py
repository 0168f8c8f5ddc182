"""``mapo view RUN [RUN ...]``: every item of run folders in the browser, served on 127.0.0.1.

:mod:`mapo.view.data` turns run folders into table rows and per-item details (read-only, no model
call); :mod:`mapo.view.server` serves them as JSON to the page in ``static/`` (Tabulator for the table).
"""

__all__: list[str] = []  # no other package imports from mapo.view (the CLI loads view.server by name)
