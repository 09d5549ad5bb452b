"""The web studio (``tunelab studio``): a FastAPI app and a small bundled frontend that works offline.

The studio holds no training logic: runs are ``tunelab train`` processes, the registry and run directories are the
source of truth, and every view is read from them again on each request.
"""

from tunelab.ui.server import StudioSettings, create_app, run_studio

__all__ = ["StudioSettings", "create_app", "run_studio"]
