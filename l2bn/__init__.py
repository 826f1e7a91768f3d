"""l2bn: learning rate and L2 weight decay for normalized networks.

With batch, weight or layer normalization a layer is invariant to the scale of its weights,
so L2 weight decay does not regularize it; it sets the weight norm and through it the
*effective* learning rate (van Laarhoven 2017, arXiv 1706.05350).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("l2bn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
