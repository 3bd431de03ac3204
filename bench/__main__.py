"""``python -m bench ...`` is ``qkernels bench ...``."""
import sys

from qkernels.testing.bench_cli import main_bench

sys.exit(main_bench(sys.argv[1:]))
