"""``python -m utils.benchmark -c CONFIG``: a thin entry point; the benchmark itself lives in trainer.benchmark."""
import sys

if __name__ == "__main__":
    from trainer.benchmark import benchmark_main

    sys.exit(benchmark_main())
