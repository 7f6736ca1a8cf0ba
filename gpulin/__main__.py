"""``python -m gpulin ...``: the ``gpulin`` command (:func:`gpulin.cli.main`)."""

import sys

from gpulin.cli import main

if __name__ == "__main__":
    sys.exit(main())
