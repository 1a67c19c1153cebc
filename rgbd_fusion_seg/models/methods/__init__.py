"""One module per fusion method; importing this package registers them all."""
from . import rgb_baseline  # noqa: F401
from . import early, mid, late, se, attention  # noqa: F401  (the MM5 study's fusion methods)
from . import rsfnet  # noqa: F401  (RSFNet, Li et al.)
