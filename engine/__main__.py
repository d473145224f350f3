"""`python -m engine` is the `faceengine` command."""

import sys

from engine.cli.main import main

sys.exit(main())
