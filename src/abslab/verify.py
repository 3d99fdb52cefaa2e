"""Re-verify run dirs in a fresh process: `python -m abslab.verify RUN_DIR... [--all]
[--data-root DIR]` (abslab.tasks.verify); exits non-zero listing each mismatch."""

import sys

from abslab.tasks.verify import main

if __name__ == "__main__":
    sys.exit(main())
