"""``python -m attentive_gcnn.accel``: build the optional native CPU kernels now."""

import sys

from attentive_gcnn.accel.native import main

sys.exit(main())
