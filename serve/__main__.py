"""``python -m serve {up,down,status,prepare}``: see :mod:`mapo.serving`."""

import sys

from mapo.serving.__main__ import main

sys.exit(main())
