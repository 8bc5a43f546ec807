"""UNet throughput per backend (same code as `aa-bench throughput`): python benchmarks/throughput.py [--help]."""
import sys

from aa_export.bench import main

if __name__ == "__main__":
    main(["throughput", *sys.argv[1:]])
