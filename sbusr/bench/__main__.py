"""``python -m sbusr.bench`` = ``sbusr-bench``."""

import sys

from sbusr.bench.cli import main

sys.exit(main())
