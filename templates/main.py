"""Flex Template entry file (FLEX_TEMPLATE_PYTHON_PY_FILE): submit the pipeline to Dataflow."""

import sys

from pipeline.launch import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
