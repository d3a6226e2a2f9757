"""What a person sees of a local run: the native libraries' start-up lines hidden, a
progress bar (or a line every few seconds off a terminal), and a short result."""

from pipeline.console.chatter import hidden_chatter, quiet_environment
from pipeline.console.display import shown_progress
from pipeline.console.exiting import exit_now
from pipeline.console.result import result_lines

__all__ = ["exit_now", "hidden_chatter", "quiet_environment", "result_lines", "shown_progress"]
