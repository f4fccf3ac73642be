"""tsconv: temporal convolutional networks for financial time series, evaluated walk-forward."""

import os

# MKL's matrix products split their sums by thread count, and pick code by instruction set:
# on an AVX-512 Xeon a fold trained on 1 and on 2 threads differed in the last bits, and
# parallel folds (fewer threads each) no longer matched a serial run. Strict conditional
# numerical reproducibility on the AVX2 code path gives the same bits for any thread count
# and on every Intel CPU with AVX2 (about 6% slower on `quick`). MKL honours it on Intel only:
# on AMD EPYC it runs its default branch (MKL_VERBOSE: CNR:AUTO,STRICT) and a product with 8
# input channels still differs by an ulp between 1 and 2 threads; there `train.threads` is
# what makes results independent of the worker count. MKL reads this at its first call, so it
# is set before tsconv uses torch; an explicit setting is left alone.
os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")

__version__ = "0.1.0"
