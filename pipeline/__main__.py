"""python -m pipeline: see pipeline.cli."""

from pipeline.cli import main
from pipeline.console.exiting import exit_now

exit_now(main())
