"""Peak memory of one identity-training step (same code as `aa-bench memory`): python benchmarks/memory.py [--help]."""
import sys

from aa_export.bench import main

if __name__ == "__main__":
    main(["memory", *sys.argv[1:]])
