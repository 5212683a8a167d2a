"""The family tests import the shared test doubles of tests/ (fakes.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
