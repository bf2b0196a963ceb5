"""``python -m attentive_gcnn.kernels``: build the optional CPU kernels now."""

import sys

from attentive_gcnn.kernels import main

sys.exit(main())
