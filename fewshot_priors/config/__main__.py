"""``python -m fewshot_priors.config [--generate]``: list the shipped configs or rewrite the zoo."""

from .zoo import main

main()
