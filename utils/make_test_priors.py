"""``python -m utils.make_test_priors``: a thin entry point; the procedure lives in data_loader.test_priors."""
import sys

if __name__ == "__main__":
    from data_loader.test_priors import make_test_priors_main

    sys.exit(make_test_priors_main())
