"""The sections of a run report: :mod:`.common` (every run), :mod:`.build`, :mod:`.evaluate`, :mod:`.winrate`.

Each function reads a :class:`mapo.report.run.Run` and returns :class:`mapo.report.document.Section`
values; nothing here renders text or writes files.
"""
