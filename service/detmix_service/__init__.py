"""detmix as a REST service: COCO batches mixed on demand (FastAPI).

>>> from detmix_service import create_app, Settings
>>> app = create_app(Settings(max_in_flight=2))     # doctest: +SKIP

Run it with ``python -m detmix_service`` (or ``detmix serve``); see ``service/README.md``.
"""

from detmix_service.app import create_app
from detmix_service.server import main
from detmix_service.settings import DatasetConfig, Settings, load_settings

__all__ = ["DatasetConfig", "Settings", "create_app", "load_settings", "main"]
