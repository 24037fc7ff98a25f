"""Keep stderr for mmtok's own messages: no library warnings, transformers logs or weight-loading bars."""

from __future__ import annotations

import os
import sys
import warnings


def quiet_libraries() -> None:
    """Silence the libraries without importing them: importing transformers costs about a second, and the
    CLI rejects bad input before it needs the ML stack. Already imported, they are told directly;
    otherwise the environment variables they read at import time do it (and reach Ray workers too)."""
    warnings.filterwarnings("ignore")
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    else:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
