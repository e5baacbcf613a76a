"""``python -m dllm ...`` is the ``dllm`` command."""

import sys

from dllm.cli import main

sys.exit(main())
