"""The applications built on the library: the ``fewshot-priors`` command line and its studies.

:mod:`~fewshot_priors.app.cli` (the command line), :mod:`~fewshot_priors.app.demo` (the synthetic
demo), :mod:`~fewshot_priors.app.real_images` (the real-images study),
:mod:`~fewshot_priors.app.study` (the training-and-scoring path they share),
:mod:`~fewshot_priors.app.report` (their tables) and :mod:`~fewshot_priors.app.predict` (the files
of ``fewshot-priors predict``). They sit above the library: they import
``fewshot_priors.config`` / ``engine`` / ``models`` / ``data``, and no module of the library
imports them. This package imports nothing itself, so ``fewshot-priors --help`` stays fast.
"""
