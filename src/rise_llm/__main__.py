"""`python -m rise_llm` is the `rise` command, e.g. under `accelerate launch -m rise_llm train`."""

import sys

from rise_llm.cli import main

sys.exit(main())
