"""One module per fusion method; importing this package registers them all."""
from . import rgb_baseline  # noqa: F401
