"""``python -m serve`` from a checkout: a thin entry point to :mod:`mapo.serving`.

The code lives in ``mapo/serving/`` so that the wheel installs one top-level package
(``mapo``); installed users run ``mapo serve ...`` or ``python -m mapo.serving ...``.
"""
