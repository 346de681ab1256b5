"""Deprecated: moved to :mod:`fewshot_priors.ssl.moco`; this name is an alias of it for one release.

``import fewshot_priors.models.moco`` gives the module ``fewshot_priors.ssl.moco`` itself (and warns
``DeprecationWarning`` when imported from outside the package).
"""

from fewshot_priors._lazy import deprecated_module_alias

deprecated_module_alias(__name__, "fewshot_priors.ssl.moco")
