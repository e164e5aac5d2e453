import sys

from integer_engine.cli import main

sys.exit(main())
