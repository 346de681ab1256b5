"""``python -m fewshot_priors ...``: the ``fewshot-priors`` command line (:mod:`fewshot_priors.app.cli`)."""

import sys

from fewshot_priors.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
