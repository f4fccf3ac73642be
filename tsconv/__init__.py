"""tsconv: temporal convolutional networks for financial time series, evaluated walk-forward."""

import os

# MKL's matrix products split their sums by thread count, and pick code by instruction set:
# on an AVX-512 machine a fold trained on 1 and on 2 threads differed in the last bits, and
# parallel folds (fewer threads each) no longer matched a serial run. Strict conditional
# numerical reproducibility on the AVX2 code path gives the same bits for any thread count,
# and on every x86 machine with AVX2 (about 6% slower on `quick`). MKL reads this at its first
# call, so it is set before tsconv uses torch; an explicit setting is left alone.
os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")

__version__ = "0.1.0"
