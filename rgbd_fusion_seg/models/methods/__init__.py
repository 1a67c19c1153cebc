"""One module per fusion method; importing this package registers them all (each module registers its own
class with @register: a new method is a new module here, nothing else to edit)."""
import importlib
import pkgutil

# The order methods are listed in (docs, bench, error messages): the baseline, the MM5 study's five, then
# the papers in the order they were added; a module not named here comes after them.
_LISTING_ORDER = ("rgb_baseline", "early", "mid", "late", "se", "attention", "rsfnet", "sccosf", "sartm")


def _listing_key(name: str) -> tuple[int, str]:
    return (_LISTING_ORDER.index(name) if name in _LISTING_ORDER else len(_LISTING_ORDER), name)


for _name in sorted((module.name for module in pkgutil.iter_modules(__path__)), key=_listing_key):
    importlib.import_module(f"{__name__}.{_name}")
