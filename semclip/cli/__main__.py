"""``python -m semclip.cli``: the same as the ``semclip`` console script."""

import sys

from semclip.cli import main

sys.exit(main())
