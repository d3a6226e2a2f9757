"""python -m pipeline: see pipeline.cli."""

from pipeline.cli import main
from pipeline.console import exit_now

exit_now(main())
