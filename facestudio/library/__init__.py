"""The library: a folder of takes, datasets and models, plus a SQLite catalog indexing it.

The folder is the truth; :class:`~facestudio.library.catalog.Catalog` is a rebuildable index
over it, and :mod:`facestudio.library.importers` turns other apps' captures into takes.
"""

from facestudio.library.catalog import Catalog, CatalogError

__all__ = ["Catalog", "CatalogError"]
