"""Cost models: the step times the simulator runs on.

* :mod:`.roofline` -- FLOPs and bytes from the model shape over peak rates, with named
  efficiency factors (the default when no measured profile exists);
* :mod:`.fitted` -- parameters fitted to measured CUDA kernels (``simdisagg fit``);
* :mod:`.reference` -- constant and exponential service times, for queueing validation.
"""

from simdisagg.costmodel.base import CostModel

__all__ = ["CostModel"]
