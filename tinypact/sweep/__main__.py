import sys

from tinypact.sweep.cli import main

sys.exit(main())
