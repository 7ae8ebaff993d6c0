"""``python -m preprocess.synth``: see :mod:`preprocess.synth.generator`."""

import sys

from preprocess.synth.generator import main

sys.exit(main())
