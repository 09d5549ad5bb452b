"""Make the studio screenshots in this folder: the browser tests, run with TUNELAB_STUDIO_SCREENSHOTS set here.

Run from anywhere: ``.venv/bin/python docs/studio/make_screenshots.py`` (needs Debian's chromium, like the tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

if __name__ == "__main__":
    env = {**os.environ, "TUNELAB_STUDIO_SCREENSHOTS": str(HERE)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_studio_browser.py"]
    sys.exit(subprocess.call(command, cwd=REPO, env=env))
