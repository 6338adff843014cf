import sys

from fputrace.cli import main

sys.exit(main())
