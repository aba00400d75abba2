import os
import warnings


# No model hub is reachable: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*lower_order_final.*")
