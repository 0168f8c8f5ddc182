"""The ``mapo`` command line: one registry of commands (:mod:`mapo.cli.app`)."""

from mapo.cli.app import main

__all__ = ["main"]
