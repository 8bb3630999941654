"""``python -m custos.cli``: the ``custos`` command without the installed script."""

import sys

from custos.cli import main

sys.exit(main())
