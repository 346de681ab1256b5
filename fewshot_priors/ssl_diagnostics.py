"""Deprecated: moved to :mod:`fewshot_priors.ssl.diagnostics`; this name is an alias of it for one release.

``import fewshot_priors.ssl_diagnostics`` gives the module ``fewshot_priors.ssl.diagnostics`` itself (and warns
``DeprecationWarning`` when imported from outside the package).
"""

from fewshot_priors._lazy import deprecated_module_alias

deprecated_module_alias(__name__, "fewshot_priors.ssl.diagnostics")
