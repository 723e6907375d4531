"""``python -m nora`` is the ``nora`` command."""

import sys

from nora.cli import main

sys.exit(main())
