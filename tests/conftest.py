"""Settings for the whole suite.

One torch thread per process: the suite runs a Celery worker and other subprocesses beside
pytest on a 2-core machine, and oversubscribed torch threads spin-wait each other (measured
here: a tiny UNet forward took 25x longer with 2 threads under load than with 1).
"""
import os

# the suites' shared fixtures and their per-suite factory (tests/service_fixtures.py); this
# directory is on sys.path (pytest puts the first folder without __init__.py there), so
# web_helpers and service_fixtures import by name from every suite
pytest_plugins = ["service_fixtures"]

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

try:
    import torch
except ImportError:  # the web app's tests do not need torch in-process
    torch = None
else:
    torch.set_num_threads(1)
