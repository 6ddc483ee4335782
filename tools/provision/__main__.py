"""Entry point of ``python -m tools.provision``."""

import sys

from tools.provision.command import main

sys.exit(main())
