"""``python -m qkernels.bench ...`` is ``qkernels bench ...``."""
import sys

from qkernels.bench.cli import main_bench

sys.exit(main_bench(sys.argv[1:]))
